"""The helpers that scripts and tests share (``workbench/``, outside the installed package)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.datasets import DIGITS_DIR, load_digits
from workbench.images import png_bytes
from workbench.machine import git_commit, machine
from workbench.processes import children_of, free_port
from workbench.sizes import parse_size, size_label

REPO = Path(__file__).resolve().parents[1]


def test_sizes_round_trip() -> None:
    assert [parse_size(s) for s in ("100k", "1M", "2500", "1.5k")] == [100_000, 1_000_000, 2500, 1500]
    assert [size_label(n) for n in (100_000, 1_000_000, 10_312)] == ["100k", "1M", "10312"]


def test_png_bytes_decode_to_the_same_pixels() -> None:
    pixels = np.arange(28 * 21, dtype=np.uint8).reshape(28, 21)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(pixels)))), pixels)


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


def test_datasets_live_outside_the_installed_package() -> None:
    """``model`` no longer ships a module that points at the repository's ``data/`` folder."""
    assert not (REPO / "model" / "datasets.py").exists()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not any(pattern.startswith("workbench") for pattern in packages["include"])
    assert DIGITS_DIR == REPO / "data" / "digits"
    assert len(load_digits("usps")) > 0
