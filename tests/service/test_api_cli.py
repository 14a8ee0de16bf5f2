"""``metah migrate`` and ``metah serve``: the real command on an empty data dir is a complete service."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from migrations.runner import current_revision, head_revision
from service.cli import main
from tests.service.conftest import API_KEY, post_image

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAH_")}
    return {**env, "OMP_NUM_THREADS": "1", **{f"METAH_{k}": v for k, v in values.items()}}


def test_migrate_applies_the_migrations(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in _environment(DATA_DIR=str(tmp_path / "var")).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("METAH_DATABASE_URL", raising=False)
    assert main(["migrate"]) == 0
    url = f"sqlite:///{tmp_path / 'var' / 'metah.db'}"
    head = head_revision()
    assert head is not None and current_revision(url) == head
    assert head in capsys.readouterr().out
    assert main(["migrate"]) == 0  # nothing left to do


def test_refuses_a_public_host_without_an_api_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        env=_environment(DATA_DIR=str(tmp_path), HOST="0.0.0.0"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "METAH_API_KEY" in done.stderr and "Traceback" not in done.stderr


def test_serve_on_an_empty_data_dir(tmp_path: Path, api_artefact: Path, digit_pngs: list[tuple[bytes, str]]) -> None:
    port = _free_port()
    data_dir = tmp_path / "var"
    env = _environment(DATA_DIR=str(data_dir), MODEL=str(api_artefact), PORT=str(port), API_KEY=API_KEY)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": API_KEY}) as client:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, "metah serve did not come up"
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            assert post_image(client, digit_pngs[0][0]).status_code == 201
            assert client.get("/v1/models").json()["active"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal after shutting down
    assert "Application shutdown complete" in output and "Traceback" not in output
    assert (data_dir / "metah.db").is_file() and list((data_dir / "index").glob("*.mhix"))
