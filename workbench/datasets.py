"""The digit domains shipped in ``data/digits``, the PACS subset in ``data/pacs``, and a writer that lays any
array set out as image folders.

Used by the benchmarks, the demo and the tests; users bring their own folders instead. Not part of the installed
package: the data lives in the repository (``data/``), next to this folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model.errors import DataError

DIGITS_DIR = Path(__file__).resolve().parents[1] / "data" / "digits"
PACS_DIR = Path(__file__).resolve().parents[1] / "data" / "pacs"  # photo / sketch / cartoon subset (README there)
DIGIT_DOMAINS = {"mnist": "mnist_test.npz", "usps": "usps.npz", "mnist_m": "mnist_m.npz"}


@dataclass(frozen=True)
class ArrayDomain:
    """Shape: images uint8 ``[N, H, W]`` or ``[N, H, W, 3]``; labels int64 ``[N]``."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def take(self, index: np.ndarray) -> ArrayDomain:
        return ArrayDomain(self.name, self.images[index], self.labels[index])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_digits(name: str, root: Path = DIGITS_DIR) -> ArrayDomain:
    if name not in DIGIT_DOMAINS:
        raise DataError(f"unknown digit domain {name!r}; choose one of {', '.join(DIGIT_DOMAINS)}")
    with np.load(root / DIGIT_DOMAINS[name]) as npz:
        return ArrayDomain(name, npz["images"], npz["labels"].astype(np.int64))


def stratified_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` indices of every label, seeded, sorted."""
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == label), size=min(per_class, int((labels == label).sum())), replace=False)
        for label in np.unique(labels)
    ]
    return np.sort(np.concatenate(picked))


def write_image_folder(
    domain: ArrayDomain, out: Path, *, labelled: bool = True, class_names: Sequence[str] | None = None
) -> Path:
    """Write one PNG per image: ``out/<class>/<domain>_<i>.png`` (labelled) or ``out/<domain>_<i>.png``.

    Returns ``out``. Existing files of the same name are overwritten; nothing else is removed.
    """
    names = list(class_names) if class_names is not None else [str(i) for i in range(int(domain.labels.max()) + 1)]
    out.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(domain.images, domain.labels, strict=True)):
        folder = out / names[int(label)] if labelled else out
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{domain.name}_{i:05d}.png")
    return out
