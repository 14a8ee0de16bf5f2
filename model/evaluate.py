"""Encode labelled image sets and score Hamming retrieval (the metrics live in :mod:`model.metrics`).

Two protocols are used across the project:

* ``target_vs_source``: labelled target-domain queries against the labelled source database
  (domain-adaptive retrieval, as in PWCF / PEACE);
* ``target_vs_target``: target queries against a target database (TAH's protocol).

Labels are matched by class *name*, so query and database folders need not list the same classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model.data import FileSet, ImageSet, load_labelled_folder
from model.errors import DataError
from model.export import LoadedEncoder, load_encoder
from model.features import single_thread
from model.metrics import RetrievalMetrics, evaluate_retrieval
from model.plots import plot_pr_curves
from model.preprocess import decode_image, to_model_input

log = logging.getLogger(__name__)

EncodeFn = Callable[[torch.Tensor], torch.Tensor]


class Labelled(Protocol):
    """Anything with class names and labels indexing them (:class:`ImageSet`, :class:`FileSet`)."""

    classes: list[str]
    labels: torch.Tensor


@torch.no_grad()
def encode_images(
    encoder: EncodeFn, images: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Run ``encoder`` over uint8 images in batches.

    Shape:
        images: uint8 ``[N, 3, H, W]`` → float32 ``[N, bits]`` of ±1.
    """
    chunks = [
        encoder(to_model_input(images[start : start + batch_size]).to(device)).float().cpu()
        for start in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(chunks).numpy()


class _PlainImages(Dataset[torch.Tensor]):
    """Decoded, unaugmented images of a file list; a file that stopped decoding becomes a black image (logged)."""

    def __init__(self, paths: Sequence[Path], size: tuple[int, int]) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> torch.Tensor:
        try:
            array = decode_image(self.paths[position], self.size)
        except DataError as exc:
            log.warning("encoding %s as a black image: %s", self.paths[position], exc)
            array = np.zeros((*self.size, 3), dtype=np.uint8)
        return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def encode_files(
    encoder: EncodeFn,
    files: FileSet,
    size: tuple[int, int],
    *,
    workers: int = 0,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Stream a file list through ``encoder`` (decoding in ``workers`` processes); memory stays one batch.

    Shape:
        returns float32 ``[len(files), bits]`` of ±1, in ``files.paths`` order.
    """
    loader = DataLoader(
        _PlainImages(files.paths, size), batch_size=batch_size, num_workers=workers, worker_init_fn=single_thread
    )
    chunks = [encoder(to_model_input(batch).to(device)).float().cpu() for batch in loader]
    return torch.cat(chunks).numpy()


def shared_label_ids(*sets: Labelled) -> list[np.ndarray]:
    """Map every set's labels onto one id space built from the union of their class names."""
    names = sorted({name for image_set in sets for name in image_set.classes})
    lookup = {name: index for index, name in enumerate(names)}
    result = []
    for image_set in sets:
        mapping = np.array([lookup[name] for name in image_set.classes], dtype=np.int64)
        result.append(mapping[image_set.labels.numpy()])
    return result


def score(
    encoder: EncodeFn, queries: ImageSet, database: ImageSet, device: str | torch.device = "cpu"
) -> RetrievalMetrics:
    """Encode both sets with ``encoder`` and compute every retrieval metric."""
    query_labels, database_labels = shared_label_ids(queries, database)
    return evaluate_retrieval(
        encode_images(encoder, queries.images, device=device),
        query_labels,
        encode_images(encoder, database.images, device=device),
        database_labels,
    )


@dataclass(frozen=True)
class Evaluation:
    metrics: RetrievalMetrics
    model_version: str
    skipped: Sequence[str]


def evaluate_artefact(
    model_path: Path, query_dir: Path, database_dir: Path, plot_path: Path | None = None
) -> Evaluation:
    """``metah evaluate``: score an exported artefact on labelled query and database folders."""
    loaded: LoadedEncoder = load_encoder(model_path)
    queries = load_labelled_folder(query_dir, loaded.input_size, what="query")
    database = load_labelled_folder(database_dir, loaded.input_size, what="database")
    if not set(queries.classes) & set(database.classes):
        raise DataError("query and database folders share no class name, so nothing can be relevant")
    metrics = score(loaded.module, queries, database)
    if plot_path is not None:
        plot_pr_curves({str(loaded.metadata["model_version"]): metrics.pr_curve}, plot_path)
    skipped = [f"{item.path}: {item.reason}" for item in (*queries.skipped, *database.skipped)]
    return Evaluation(metrics, str(loaded.metadata["model_version"]), skipped)
