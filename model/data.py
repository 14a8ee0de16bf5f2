"""Image folders on disk: listed as :class:`FileSet` (paths, labels, sizes), or decoded into memory.

A *labelled* folder has the ImageFolder layout ``root/<class name>/<image>`` (any depth below the class
folder); an *unlabelled* folder is any tree of images, sub-folder names ignored. Hidden files and folders
are skipped silently; every other file that does not open as an image is reported by name and skipped.

Listing reads only each file's header (its format and size), so it costs the same whatever the pictures'
size; training then streams the files (:mod:`model.batches`) or, for small sets, decodes them all at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from model.errors import DataError
from model.preprocess import DEFAULT_MAX_PIXELS, decode_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class FileSet:
    """Image files with optional labels, not decoded.

    Shape:
        labels: int64 ``[N]`` (``-1`` when unlabelled); ``sizes[i]`` is ``(width, height)`` as stored.
    """

    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]
    sizes: list[tuple[int, int]]
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, index: np.ndarray) -> FileSet:
        return FileSet(
            [self.paths[i] for i in index],
            self.labels[torch.from_numpy(np.asarray(index, dtype=np.int64))],
            self.classes,
            [self.sizes[i] for i in index],
        )


def probe_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding the pixels.

    Raises:
        DataError: not an image PIL can open, or larger than ``max_pixels``.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"not a readable image: {exc}") from exc
    if width * height > max_pixels:
        raise DataError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    return width, height


def _probe_all(files: Sequence[Path]) -> tuple[list[int], list[tuple[int, int]], list[SkippedFile]]:
    kept: list[int] = []
    sizes: list[tuple[int, int]] = []
    skipped: list[SkippedFile] = []
    for position, path in enumerate(files):
        try:
            sizes.append(probe_image(path))
        except DataError as exc:
            skipped.append(SkippedFile(path, str(exc)))
            continue
        kept.append(position)
    return kept, sizes, skipped


def _class_files(root: Path, what: str) -> tuple[list[Path], list[int], list[str]]:
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
    return files, file_labels, [p.name for p in class_dirs]


def _require_every_class(labels: torch.Tensor, classes: list[str], what: str) -> None:
    counts = torch.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"{what} class folder(s) without a readable image: {', '.join(empty)}")


def list_labelled_folder(root: Path, what: str = "source") -> FileSet:
    """List an ImageFolder tree: one sub-folder per class, class index = position in sorted names.

    Raises:
        DataError: missing folder, no class folders, or a class with no readable image.
    """
    files, file_labels, classes = _class_files(root, what)
    kept, sizes, skipped = _probe_all(files)
    labels = torch.tensor([file_labels[i] for i in kept], dtype=torch.int64)
    _require_every_class(labels, classes, what)
    return FileSet([files[i] for i in kept], labels, classes, sizes, skipped)


def list_unlabelled_folder(root: Path, what: str = "target") -> FileSet:
    """List every image below ``root``, whatever the layout; labels are all ``-1``.

    Raises:
        DataError: missing folder or no readable image in it.
    """
    _require_dir(root, what)
    files = _visible_files(root)
    kept, sizes, skipped = _probe_all(files)
    if not kept:
        raise DataError(f"{what} folder {str(root)!r} contains no readable image")
    labels = torch.full((len(kept),), -1, dtype=torch.int64)
    return FileSet([files[i] for i in kept], labels, [], sizes, skipped)


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


def decode_files(files: FileSet, size: tuple[int, int], what: str = "source") -> ImageSet:
    """Decode every file of a :class:`FileSet` into memory; a file that fails to decode is skipped and reported.

    Raises:
        DataError: a labelled set loses every image of a class, or an unlabelled set every image.
    """
    arrays, kept, skipped = _decode_all(files.paths, size)
    labels = files.labels[torch.tensor(kept, dtype=torch.int64)] if kept else files.labels[:0]
    if files.classes:
        _require_every_class(labels, files.classes, what)
    elif not kept:
        raise DataError(f"{what} folder contains no readable image")
    return ImageSet(
        images=_stack(arrays, size),
        labels=labels,
        paths=[files.paths[i] for i in kept],
        classes=files.classes,
        skipped=[*files.skipped, *skipped],
    )


def load_labelled_folder(root: Path, size: tuple[int, int], what: str = "source") -> ImageSet:
    """Decode an ImageFolder tree into memory (see :func:`list_labelled_folder`)."""
    return decode_files(list_labelled_folder(root, what), size, what)


def load_unlabelled_folder(root: Path, size: tuple[int, int], what: str = "target") -> ImageSet:
    """Decode every image below ``root`` into memory (see :func:`list_unlabelled_folder`)."""
    return decode_files(list_unlabelled_folder(root, what), size, what)


def report_skipped(skipped: Iterable[SkippedFile]) -> list[str]:
    """Log one line per skipped file and return them (for the summary in metrics.json)."""
    lines = [f"{item.path}: {item.reason}" for item in skipped]
    for line in lines:
        log.warning("skipped %s", line)
    return lines
