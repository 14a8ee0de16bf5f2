"""``metah migrate`` and ``metah serve``: the real command on an empty data dir is a complete service."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from service.migrate import current_revision, head_revision
from tests.service.conftest import API_KEY, REPO, free_port, metah_environment, post_image, running_metah_serve


def test_migrate_applies_the_migrations(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in metah_environment(DATA_DIR=str(tmp_path / "var")).items():
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
        env=metah_environment(DATA_DIR=str(tmp_path), HOST="0.0.0.0"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "METAH_API_KEY" in done.stderr and "Traceback" not in done.stderr


def test_serve_on_an_empty_data_dir(tmp_path: Path, api_artefact: Path, digit_pngs: list[tuple[bytes, str]]) -> None:
    port = free_port()
    data_dir = tmp_path / "var"
    env = metah_environment(DATA_DIR=str(data_dir), MODEL=str(api_artefact), PORT=str(port), API_KEY=API_KEY)
    with running_metah_serve(env, port) as run:
        run.client.headers["X-Request-ID"] = "cli-test-1"
        assert post_image(run.client, digit_pngs[0][0]).status_code == 201
        assert run.client.get("/v1/models").json()["active"]
    output = run.output
    assert run.process.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal after shutdown
    assert "Application shutdown complete" in output and "Traceback" not in output
    # METAH_LOG_FORMAT defaults to json: every line of the server and of its worker child is one JSON object.
    lines = [line for line in output.splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), output
    entries = [json.loads(line) for line in lines]
    [upload] = [e for e in entries if e["logger"] == "metah.access" and e["path"] == "/v1/images"]
    assert upload["request_id"] == "cli-test-1" and upload["status"] == 201 and upload["method"] == "POST"
    assert (data_dir / "metah.db").is_file() and list((data_dir / "index").glob("*.mhix"))
