"""Prepare the demo encoder: MeTAH, 64 bits, MNIST digits (source) → USPS + MNIST-M (target).

Idempotent: when ``OUT/model.pt`` exists it is reused and the script returns at once. Everything comes from
the repository's ``data/digits`` (no download). MNIST-M images 6000–8999 are derived from MNIST test images
6000–8999, so the source uses MNIST images 0–5999 only.

    .venv/bin/python scripts/demo_model.py --out var/demo-model
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from model.config import TrainConfig
from model.datasets import load_digits, write_image_folder
from model.train import train


def prepare_folders(work: Path) -> tuple[Path, Path]:
    source_dir, target_dir = work / "source", work / "target"
    if not (work / ".complete").exists():
        mnist = load_digits("mnist")
        write_image_folder(mnist.take(np.arange(6000)), source_dir)
        write_image_folder(load_digits("usps"), target_dir / "usps", labelled=False)
        write_image_folder(load_digits("mnist_m"), target_dir / "mnist_m", labelled=False)
        (work / ".complete").touch()
    return source_dir, target_dir


def ensure_demo_model(out: Path, iterations: int | None = None) -> Path:
    """Return ``out/model.pt``, training it first when it does not exist yet."""
    model = out / "model.pt"
    if model.exists():
        print(f"demo model already prepared: {model}")
        return model
    source_dir, target_dir = prepare_folders(out / "data")
    config = TrainConfig().override(iterations=iterations)
    print(f"training the demo model ({config.method}, {config.bits} bits, {config.iterations} steps) ...")
    result = train(config, source_dir, target_dir, out)
    print(f"demo model {result.model_version} written to {model}")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("var/demo-model"))
    parser.add_argument("--iterations", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ensure_demo_model(args.out, args.iterations)


if __name__ == "__main__":
    main()
