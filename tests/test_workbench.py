"""The helpers that scripts and tests share (``workbench/``, outside the installed package)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import anyio
import numpy as np
import pytest
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

from workbench.datasets import DIGITS_DIR, load_digits
from workbench.images import png_bytes
from workbench.loadtest import Upload
from workbench.machine import git_commit, machine
from workbench.processes import children_of, free_port
from workbench.sizes import parse_size, size_label
from workbench.wrk import BOUNDARY, write_bodies

REPO = Path(__file__).resolve().parents[1]


def test_sizes_round_trip() -> None:
    assert [parse_size(s) for s in ("100k", "1M", "2500", "1.5k")] == [100_000, 1_000_000, 2500, 1500]
    assert [size_label(n) for n in (100_000, 1_000_000, 10_312)] == ["100k", "1M", "10312"]


def test_png_bytes_decode_to_the_same_pixels() -> None:
    pixels = np.arange(28 * 21, dtype=np.uint8).reshape(28, 21)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(pixels)))), pixels)


def test_wrk_bodies_are_the_uploads_as_the_service_parses_them(tmp_path: Path) -> None:
    """Each file wrk sends is one query's multipart upload; the Lua script reads them by name."""
    queries = [Upload(png_bytes(np.full((8, 8), value, np.uint8)), "0", "usps") for value in (0, 255)]
    names = write_bodies(queries, tmp_path)
    assert names == ["0.body", "1.body"] and "boundary=" + BOUNDARY in (tmp_path / "search.lua").read_text()

    async def parsed(body: bytes) -> tuple[str | None, bytes]:
        sent = False

        async def receive() -> dict[str, object]:
            nonlocal sent
            chunk, sent = (b"" if sent else body), True
            return {"type": "http.request", "body": chunk, "more_body": False}

        headers = [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]
        form = await Request({"type": "http", "method": "POST", "headers": headers}, receive).form()
        image = form["image"]
        assert isinstance(image, UploadFile)
        return image.filename, await image.read()

    for name, query in zip(names, queries, strict=True):
        filename, data = anyio.run(parsed, (tmp_path / name).read_bytes())
        assert filename == "query.png" and data == query.data


def test_free_port_can_be_bound_and_children_are_found() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in children_of(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_machine_names_the_cpu_and_takes_extras() -> None:
    info = machine(note="x")
    assert info["cpu"] and info["cores"] >= 1 and info["note"] == "x" and "numpy" in info


def test_a_benchmark_writing_its_raw_lines_does_not_make_its_commit_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "benchmarks" / "runs.jsonl").write_text("{}\n")
    (tmp_path / "model" / "net.py").write_text("x = 1\n")
    monkeypatch.delenv("METAH_GIT_COMMIT", raising=False)
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    monkeypatch.chdir(tmp_path / "model")  # from a subfolder too: the check covers the whole tree
    clean = git_commit()
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "benchmarks" / "runs.jsonl").write_text("{}\n{}\n")
    assert git_commit() == clean
    (tmp_path / "model" / "net.py").write_text("x = 2\n")
    assert git_commit() == f"{clean}-dirty"


def test_a_copy_of_the_tree_names_its_commit_whatever_git_metadata_it_carries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no checkout here
    monkeypatch.delenv("METAH_GIT_COMMIT", raising=False)
    assert git_commit() == "unknown"
    monkeypatch.setenv("METAH_GIT_COMMIT", "3c3a966ee0fd")
    assert git_commit() == "3c3a966ee0fd"
    monkeypatch.chdir(Path(__file__).parent)  # inside this repository's checkout: the named commit still wins
    assert git_commit() == "3c3a966ee0fd"


def test_datasets_live_outside_the_installed_package() -> None:
    """``model`` no longer ships a module that points at the repository's ``data/`` folder."""
    assert not (REPO / "model" / "datasets.py").exists()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not any(pattern.startswith("workbench") for pattern in packages["include"])
    assert DIGITS_DIR == REPO / "data" / "digits"
    assert len(load_digits("usps")) > 0
