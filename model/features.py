"""Backbone features computed once and cached on disk, for the ``frozen`` training mode.

Every image gets ``views`` feature vectors: view 0 is the plain image (exactly what the exported encoder sees,
CONTRACT §3 preprocessing), views 1… are photo augmentations (:func:`model.augment.photo_augment`) drawn from a
generator seeded by the image's content, so a view is the same in every run. The cache is keyed by the backbone
(name, weights digest, input size) and by the image *content* (SHA-256 of the file's bytes), one float16 ``.npy``
file per image and view, so the next run or training job on the same images — under any file name — reuses
them, and a run that needs more views computes only the missing ones.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model.augment import photo_augment
from model.backbones import Backbone, cpu_passes
from model.data import FileSet, SkippedFile
from model.errors import DataError
from model.export import weights_digest
from model.normalize import Normalize
from model.preprocess import decode_image

log = logging.getLogger(__name__)

AUGMENT_VERSION = 1  # bump when photo_augment or the view seeding changes: old cached views are then not reused
CACHE_ENV = "METAH_FEATURE_CACHE"


def default_cache_root() -> Path:
    """``$METAH_FEATURE_CACHE``, else ``$XDG_CACHE_HOME/metah/features``, else ``~/.cache/metah/features``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "metah" / "features"


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


class FeatureCache:
    """One folder per backbone; ``<key[:2]>/<key>.v<view>.npy`` per image and view (float16 ``[D]``).

    ``grey`` is the augmented views' greyscale probability (:func:`model.augment.photo_augment`): views drawn with
    another probability are other files (``.v<view>g<percent>.npy``); the plain view 0 is shared by all.
    """

    def __init__(
        self, root: Path, backbone_name: str, backbone: Backbone, *, grey: float = 0.0, drawing: float = 0.0
    ) -> None:
        digest = weights_digest(backbone.module)[:16]
        height, width = backbone.input_size
        self.folder = root / f"{backbone_name}-{digest}-{height}x{width}-aug{AUGMENT_VERSION}"
        self.dim = backbone.out_features
        self.grey = grey
        self.drawing = drawing

    def path(self, key: str, view: int) -> Path:
        recipe = ""
        if view > 0:
            recipe += f"g{round(self.grey * 100)}" if self.grey > 0 else ""
            recipe += f"d{round(self.drawing * 100)}" if self.drawing > 0 else ""
        return self.folder / key[:2] / f"{key}.v{view}{recipe}.npy"

    def has(self, key: str, views: int) -> bool:
        return all(self.path(key, view).exists() for view in range(views))

    def load(self, key: str, view: int) -> np.ndarray:
        return np.load(self.path(key, view))

    def save(self, key: str, view: int, vector: np.ndarray) -> None:
        """Atomic write (temporary file + rename): a crash never leaves a half-written entry."""
        path = self.path(key, view)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            np.save(fh, vector.astype(np.float16))
        os.replace(tmp, path)


@dataclass(frozen=True)
class _Item:
    position: int
    key: str
    views: torch.Tensor | None  # uint8 [V, 3, H, W] of the views still missing, None when all are cached
    first_view: int
    error: str | None = None


class _ViewsDataset(Dataset[_Item]):
    """Reads, hashes and decodes one file, and draws its missing views (in a loader worker)."""

    def __init__(self, paths: Sequence[Path], size: tuple[int, int], views: int, cache: FeatureCache) -> None:
        self.paths = list(paths)
        self.size = size
        self.views = views
        self.cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> _Item:
        try:
            data = self.paths[position].read_bytes()
        except OSError as exc:
            return _Item(position, "", None, 0, f"cannot read: {exc.strerror}")
        key = content_key(data)
        missing = [view for view in range(self.views) if not self.cache.path(key, view).exists()]
        if not missing:
            return _Item(position, key, None, 0)
        try:
            image = torch.from_numpy(decode_image(data, self.size)).permute(2, 0, 1)
        except DataError as exc:
            return _Item(position, key, None, 0, str(exc))
        views = draw_views(image, key, missing[0], self.views, self.cache.grey, self.cache.drawing)
        return _Item(position, key, views, missing[0])


def draw_views(image: torch.Tensor, key: str, first: int, views: int, grey: float, drawing: float) -> torch.Tensor:
    """uint8 ``[views - first, 3, H, W]``: view 0 is the image itself, view v > 0 an augmentation seeded by
    ``(key, v)``, greyscale with probability ``grey``, redrawn as a drawing with probability ``drawing``."""
    plain = image.float().div(255.0)
    out = []
    for view in range(first, views):
        if view == 0:
            out.append(image)
            continue
        generator = torch.Generator().manual_seed(int(key[:12], 16) * 64 + view)
        view_image = photo_augment(plain, generator, grey=grey, drawing=drawing)
        out.append(view_image.mul(255.0).round().to(torch.uint8))
    return torch.stack(out)


def _collate(items: list[_Item]) -> list[_Item]:
    return items


def single_thread(worker: int) -> None:
    """Loader workers decode one image at a time: torch's intra-op threads would only fight the trainer's."""
    torch.set_num_threads(1)


def extract_features(
    files: FileSet,
    backbone: Backbone,
    cache: FeatureCache,
    views: int,
    *,
    device: torch.device,
    workers: int,
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[list[str], list[SkippedFile]]:
    """Fill the cache with ``views`` views of every file; return each file's content key (``""`` if skipped).

    Args:
        files: the images to encode.
        backbone: the pretrained feature extractor (run in eval mode, without gradients).
        cache: where features are read from and written to.
        views: views per image (1 = the plain image only).
        device: where the backbone runs.
        workers: decoding processes (0 decodes in this process).
        batch_size: images per loader batch.
        on_batch: called with ``(images done, images total)`` after every batch.

    Returns:
        the content keys, aligned with ``files.paths``, and the files that could not be read or decoded.
    """
    dataset = _ViewsDataset(files.paths, backbone.input_size, views, cache)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate, worker_init_fn=single_thread
    )
    normalize = Normalize(backbone.mean, backbone.std).to(device)
    module = backbone.module.to(device).to(memory_format=torch.channels_last).eval()  # faster convolutions on CPU
    keys = [""] * len(files)
    skipped: list[SkippedFile] = []
    computed = done = 0
    with torch.no_grad():
        for items in loader:
            todo = [item for item in items if item.views is not None]
            for item in items:
                if item.error is not None:
                    skipped.append(SkippedFile(files.paths[item.position], item.error))
                else:
                    keys[item.position] = item.key
            if todo:
                stacked = torch.cat([item.views for item in todo if item.views is not None])
                batch = normalize(stacked.to(device).float().div_(255.0)).contiguous(memory_format=torch.channels_last)
                passes = cpu_passes(backbone.name, len(batch)) if device.type == "cpu" else [slice(None)]
                features = torch.cat([module(batch[part]) for part in passes]).float().cpu().numpy()
                row = 0
                for item in todo:
                    assert item.views is not None
                    for offset in range(item.views.shape[0]):
                        cache.save(item.key, item.first_view + offset, features[row])
                        row += 1
                computed += len(todo)
            done += len(items)
            if on_batch is not None:
                on_batch(done, len(files))
    log.info("features: %d of %d image(s) computed, the rest read from %s", computed, len(files), cache.folder)
    return keys, skipped


# Images a batch-norm re-estimation reads at most (a fixed-seed sample of the training images beyond that): the
# statistics of a few thousand images are as good as those of all of them, at a bounded cost.
ADAPT_IMAGES = 2000


class _PlainDataset(Dataset[torch.Tensor | None]):
    """One file's plain view, uint8 ``[3, H, W]`` (``None`` when it cannot be read or decoded)."""

    def __init__(self, paths: Sequence[Path], size: tuple[int, int]) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> torch.Tensor | None:
        try:
            return torch.from_numpy(decode_image(self.paths[position].read_bytes(), self.size)).permute(2, 0, 1)
        except (OSError, DataError):
            return None


def adapt_batch_norm(
    backbone: Backbone,
    sets: Sequence[FileSet],
    *,
    device: torch.device,
    workers: int,
    limit: int = ADAPT_IMAGES,
    batch_size: int = 32,
) -> int:
    """Re-estimate ``backbone``'s batch-norm statistics on the training images of every domain together.

    ImageNet's statistics normalise sketches and cartoons as if they were photos; statistics of the union of
    the source and target images (shuffled, so every batch mixes the domains) sit between them. One pass without
    gradients, every other layer in eval mode (no dropout); the new statistics are part of the weights, so the
    feature cache (keyed by the weights' digest) and the exported encoder follow. At most ``limit`` images, a
    fixed-seed sample. Returns how many images were read.
    """
    paths = sorted(path for files in sets for path in files.paths)
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))[:limit].tolist()
    dataset = _PlainDataset([paths[i] for i in order], backbone.input_size)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=list, worker_init_fn=single_thread
    )
    module = backbone.module.to(device).eval()
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the whole pass
        norm.train()
    normalize = Normalize(backbone.mean, backbone.std).to(device)
    used = 0
    with torch.no_grad():
        for images in loader:
            kept = [image for image in images if image is not None]
            if len(kept) > 1:  # batch statistics of one image are not statistics
                module(normalize(torch.stack(kept).to(device).float().div_(255.0)))
                used += len(kept)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    module.eval()
    log.info("batch norm: statistics of %d layer(s) re-estimated on %d training image(s)", len(norms), used)
    return used


class FeatureTable:
    """Cached features of a set of images, in memory when they fit ``budget_bytes``, else read per batch.

    Shape:
        :meth:`gather` ``(index [B], view [B])`` → float32 ``[B, D]``.
    """

    def __init__(self, cache: FeatureCache, keys: Sequence[str], views: int, budget_bytes: int) -> None:
        self.cache = cache
        self.keys = list(keys)
        self.views = views
        self.table: torch.Tensor | None = None
        if len(self.keys) * views * cache.dim * 2 <= budget_bytes:
            loaded = [[cache.load(key, view) for view in range(views)] for key in self.keys]
            self.table = torch.from_numpy(np.asarray(loaded, dtype=np.float16))

    def __len__(self) -> int:
        return len(self.keys)

    def gather(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[index, view].float()
        rows = [self.cache.load(self.keys[i], v) for i, v in zip(index.tolist(), view.tolist(), strict=True)]
        return torch.from_numpy(np.stack(rows)).float()

    def plain(self, batch_size: int = 1024) -> Iterator[torch.Tensor]:
        """View 0 of every image, in order, in batches (what the exported encoder would compute)."""
        for start in range(0, len(self.keys), batch_size):
            index = torch.arange(start, min(start + batch_size, len(self.keys)))
            yield self.gather(index, torch.zeros_like(index))
