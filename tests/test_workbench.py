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
from PIL import Image

from workbench.datasets import DIGITS_DIR, load_digits
from workbench.images import png_bytes
from workbench.machine import machine
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


def test_datasets_live_outside_the_installed_package() -> None:
    """``model`` no longer ships a module that points at the repository's ``data/`` folder."""
    assert not (REPO / "model" / "datasets.py").exists()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not any(pattern.startswith("workbench") for pattern in packages["include"])
    assert DIGITS_DIR == REPO / "data" / "digits"
    assert len(load_digits("usps")) > 0
