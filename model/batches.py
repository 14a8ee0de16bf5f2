"""Where a training step's inputs come from: the same draw, three ways of turning it into a batch.

Every step draws source (and target) indices from one seeded :class:`BatchSampler` in the main process; the
classes below turn a draw into the trainable module's input:

* :class:`InMemoryImages` — decoded images held in memory (small sets: their decoded size fits the memory
  budget), augmented on the training device. The digit path; resumes exactly.
* :class:`StreamedImages` — images decoded and augmented per step by ``DataLoader`` worker processes, so memory
  stays bounded whatever the folder size. The loader prefetches a few steps ahead, so a resumed run draws the
  same batches but not at bit-identical augmentation when the prefetch straddled the checkpoint.
* :class:`CachedFeatures` — cached backbone features (``frozen`` mode): a random cached view per image.

Source rows come first in every batch, then target rows (one shared forward pass, as the objective expects).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model.augment import apply_photo_views, draw_photo_view, photo_augment, random_affine
from model.data import FileSet, ImageSet
from model.errors import DataError
from model.features import FeatureTable, single_thread
from model.preprocess import decode_image, to_model_input

AUGMENT_KINDS = ("affine", "photo")
SEED_RANGE = 2**62


class BatchSampler:
    """Seeded uniform batches without replacement inside a batch; its state resumes exactly."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def draw(self, population: int, size: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.choice(population, size=size, replace=population < size))

    def integers(self, high: int, size: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.integers(high, size=size))

    def state(self) -> dict[str, Any]:
        return dict(self.rng.bit_generator.state)

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


@dataclass(frozen=True)
class Draw:
    """One step's sample: indices into the source and target sets (``target`` empty when unused)."""

    source: torch.Tensor
    target: torch.Tensor


def draw_step(sampler: BatchSampler, sources: int, targets: int, batch_size: int) -> Draw:
    """The indices of one step; ``targets == 0`` draws no target rows."""
    source = sampler.draw(sources, batch_size)
    target = sampler.draw(targets, batch_size) if targets else torch.empty(0, dtype=torch.int64)
    return Draw(source, target)


def augment_one(image: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """Augment one float ``[3, H, W]`` image in ``[0, 1]`` with randomness drawn from ``seed`` alone."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "photo":
        return photo_augment(image, generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return random_affine(image.unsqueeze(0)).squeeze(0)


class InMemoryImages:
    """Decoded uint8 images on the training device.

    ``affine`` augments the whole batch at once with the global RNG (the digit recipe); ``photo`` draws each
    image's view from a seed drawn from the sampler and renders the batch's views together.
    """

    def __init__(
        self,
        source: ImageSet,
        target: ImageSet | None,
        device: torch.device,
        augment: str | None,
        scale: tuple[float, float],
    ) -> None:
        self.source_images = source.images.to(device)
        self.source_labels = source.labels.to(device)
        self.target_images = target.images.to(device) if target is not None else None
        self.device = device
        self.augment = augment
        self.scale = scale
        self.sizes = (len(source), 0 if target is None else len(target))

    def batch(self, draw: Draw, sampler: BatchSampler) -> tuple[torch.Tensor, torch.Tensor]:
        images = [self.source_images[draw.source.to(self.device)]]
        if draw.target.numel() and self.target_images is not None:
            images.append(self.target_images[draw.target.to(self.device)])
        batch = to_model_input(torch.cat(images))
        if self.augment == "affine":
            batch = random_affine(batch, scale=self.scale)
        elif self.augment == "photo":  # each image's view drawn from its own seed, as augment_one draws it
            height, width = batch.shape[-2:]
            seeds = sampler.integers(SEED_RANGE, batch.shape[0]).tolist()
            views = [draw_photo_view(height, width, torch.Generator().manual_seed(seed)) for seed in seeds]
            batch = apply_photo_views(batch, views)
        return batch, self.source_labels[draw.source.to(self.device)]


class _PlannedImages(Dataset[tuple[torch.Tensor, int]]):
    """Decodes and augments the ``(domain, index, seed)`` items of a planned batch (in a loader worker).

    A file that no longer decodes is replaced by the next one of its domain (the listing only read headers).
    """

    def __init__(self, domains: tuple[FileSet, ...], size: tuple[int, int], augment: str | None) -> None:
        self.domains = domains
        self.size = size
        self.augment = augment

    def __len__(self) -> int:
        return sum(len(domain) for domain in self.domains)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        domain, index, seed = item
        files = self.domains[domain]
        for attempt in range(len(files)):
            position = (index + attempt) % len(files)
            try:
                array = decode_image(files.paths[position], self.size)
            except DataError:
                continue
            image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
            if self.augment is not None and seed >= 0:
                image = augment_one(image, self.augment, seed)
            return image, int(files.labels[position])
        raise DataError(f"no image of domain {domain} decodes any more")


class _Plan:
    """The loader's batch sampler: one list of ``(domain, index, seed)`` per remaining training step."""

    def __init__(self, sampler: BatchSampler, sizes: tuple[int, int], batch_size: int, steps: int) -> None:
        self.sampler = sampler
        self.sizes = sizes
        self.batch_size = batch_size
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for _ in range(self.steps):
            draw = draw_step(self.sampler, self.sizes[0], self.sizes[1], self.batch_size)
            rows = [(0, int(i)) for i in draw.source] + [(1, int(i)) for i in draw.target]
            seeds = self.sampler.integers(SEED_RANGE, len(rows)).tolist()
            yield [(domain, index, seed) for (domain, index), seed in zip(rows, seeds, strict=True)]


class StreamedImages:
    """Images read, decoded and augmented by ``workers`` processes, a few steps ahead of training."""

    def __init__(
        self,
        source: FileSet,
        target: FileSet | None,
        size: tuple[int, int],
        augment: str | None,
        workers: int,
    ) -> None:
        self.dataset = _PlannedImages((source, target or source), size, augment)
        self.sizes = (len(source), 0 if target is None else len(target))
        self.workers = workers
        self.iterator: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def start(self, sampler: BatchSampler, batch_size: int, steps: int, seed: int) -> None:
        """Begin streaming ``steps`` batches drawn from ``sampler``."""
        plan = _Plan(sampler, self.sizes, batch_size, steps)
        loader = DataLoader(
            self.dataset,
            batch_sampler=plan,
            num_workers=self.workers,
            persistent_workers=False,
            prefetch_factor=2 if self.workers else None,
            generator=torch.Generator().manual_seed(seed),
            worker_init_fn=single_thread,
        )
        self.iterator = iter(loader)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.iterator is None:
            raise RuntimeError("StreamedImages.start() was not called")
        images, labels = next(self.iterator)
        return images, labels[:batch_size]

    def stop(self) -> None:
        """End the stream now: its workers exit (releasing the loader's iterator shuts them down).

        Left alive through the end-of-run evaluation, idle workers kept their copies of the trainer's pages (up
        to 1.1 GB for EfficientNet-Lite0) and the trainer grew by 0.6 GB with four of them (scripts/bench_memory.py).
        """
        self.iterator = None


class CachedFeatures:
    """Cached backbone features; each row takes one of its image's cached views at random."""

    def __init__(self, source: FeatureTable, target: FeatureTable | None, labels: torch.Tensor) -> None:
        self.source = source
        self.target = target
        self.labels = labels
        self.sizes = (len(source), 0 if target is None else len(target))

    def batch(self, draw: Draw, sampler: BatchSampler) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.source.gather(draw.source, sampler.integers(self.source.views, len(draw.source)))]
        if draw.target.numel() and self.target is not None:
            rows.append(self.target.gather(draw.target, sampler.integers(self.target.views, len(draw.target))))
        return torch.cat(rows), self.labels[draw.source]
