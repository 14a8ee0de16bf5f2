"""Image folders on disk → decoded uint8 tensors in memory.

A *labelled* folder has the ImageFolder layout ``root/<class name>/<image>`` (any depth below the class
folder); an *unlabelled* folder is any tree of images, sub-folder names ignored. Hidden files and folders
are skipped silently; every other file that does not decode is reported by name and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.errors import DataError
from model.preprocess import decode_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class ImageSet:
    """Decoded images with optional labels.

    Shape:
        images: uint8 ``[N, 3, H, W]``; labels: int64 ``[N]`` (``-1`` when unlabelled).
    """

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[Path]
    classes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _visible_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _require_dir(root: Path, what: str) -> None:
    if not root.is_dir():
        raise DataError(f"{what} folder {str(root)!r} does not exist or is not a folder")


def _decode_all(files: Sequence[Path], size: tuple[int, int]) -> tuple[list[np.ndarray], list[int], list[SkippedFile]]:
    arrays: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[SkippedFile] = []
    for position, path in enumerate(files):
        try:
            arrays.append(decode_image(path, size))
        except DataError as exc:
            skipped.append(SkippedFile(path, str(exc)))
            continue
        kept.append(position)
    return arrays, kept, skipped


def _stack(arrays: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    if not arrays:
        return torch.empty((0, 3, *size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_labelled_folder(root: Path, size: tuple[int, int], what: str = "source") -> ImageSet:
    """Load an ImageFolder tree: one sub-folder per class, class index = position in sorted names.

    Raises:
        DataError: missing folder, no class folders, or a class with no readable image.
    """
    _require_dir(root, what)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{what} folder {str(root)!r} has no class sub-folders (expected root/<class>/<image>)")
    files: list[Path] = []
    file_labels: list[int] = []
    for index, class_dir in enumerate(class_dirs):
        found = _visible_files(class_dir)
        files.extend(found)
        file_labels.extend([index] * len(found))
    arrays, kept, skipped = _decode_all(files, size)
    labels = torch.tensor([file_labels[i] for i in kept], dtype=torch.int64)
    counts = torch.bincount(labels, minlength=len(class_dirs))
    empty = [class_dirs[i].name for i in range(len(class_dirs)) if counts[i] == 0]
    if empty:
        raise DataError(f"{what} class folder(s) without a readable image: {', '.join(empty)}")
    return ImageSet(
        images=_stack(arrays, size),
        labels=labels,
        paths=[files[i] for i in kept],
        classes=[p.name for p in class_dirs],
        skipped=skipped,
    )


def load_unlabelled_folder(root: Path, size: tuple[int, int], what: str = "target") -> ImageSet:
    """Load every image below ``root``, whatever the layout; labels are all ``-1``.

    Raises:
        DataError: missing folder or no readable image in it.
    """
    _require_dir(root, what)
    files = _visible_files(root)
    arrays, kept, skipped = _decode_all(files, size)
    if not kept:
        raise DataError(f"{what} folder {str(root)!r} contains no readable image")
    return ImageSet(
        images=_stack(arrays, size),
        labels=torch.full((len(kept),), -1, dtype=torch.int64),
        paths=[files[i] for i in kept],
        classes=[],
        skipped=skipped,
    )


def report_skipped(skipped: Iterable[SkippedFile]) -> list[str]:
    """Log one line per skipped file and return them (for the summary in metrics.json)."""
    lines = [f"{item.path}: {item.reason}" for item in skipped]
    for line in lines:
        log.warning("skipped %s", line)
    return lines
