"""The one training loop for every method (``source_only``, ``tah``, ``metah``).

A run folder holds ``model.pt`` (the encoder artefact), ``checkpoint.pt`` (resumable), ``metrics.json``,
``history.csv``, ``loss_curves.png`` and ``pr_curve.png``. The same code runs on CPU, on CUDA, and under
``torchrun --nproc_per_node=N`` (DistributedDataParallel, gloo on CPU / NCCL on CUDA); under DDP each
process draws its own batches, so one step sees ``N × batch_size`` images of each domain.

Two modes share this loop (:mod:`model.choice` picks one when asked for ``auto``):

* ``finetune``: the whole network trains on images, a pretrained backbone at ``lr × backbone_lr_mult``; images
  come from memory when their decoded size fits ``memory_budget_mb``, else they stream from disk through
  ``DataLoader`` workers (:mod:`model.batches`); mixed precision (bfloat16) on CUDA.
* ``frozen``: backbone features are computed once per image and view and cached on disk
  (:mod:`model.features`); only the heads train, on those features.

Either way the exported artefact is the same: normalisation + backbone + hash projection (CONTRACT §3).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.backbones import Backbone
from model.batches import BatchSampler, CachedFeatures, InMemoryImages, StreamedImages, draw_step
from model.checkpoint import load_checkpoint, save_checkpoint
from model.choice import choose_backbone, choose_mode
from model.clusters import centroid_labels, estimate_class_mix, nearest_rows
from model.config import TrainConfig
from model.data import (
    FileSet,
    SkippedFile,
    decode_files,
    list_labelled_folder,
    list_unlabelled_folder,
    report_skipped,
)
from model.distributed import (
    ProcessGroup,
    barrier,
    destroy_process_group,
    init_process_group,
    parameters_in_sync,
)
from model.ema import WeightEMA
from model.errors import CheckpointError, ConfigError
from model.evaluate import encode_files, shared_label_ids
from model.export import export_encoder, new_model_version, utc_now
from model.factory import build_network, load_backbone
from model.features import (
    FeatureCache,
    FeatureTable,
    adapt_batch_norm,
    default_cache_root,
    extract_features,
)
from model.metrics import RetrievalMetrics, evaluate_retrieval
from model.network import MeTAHNet
from model.objective import compute_objective
from model.plots import plot_history, plot_pr_curves

log = logging.getLogger(__name__)

# The cluster term's pseudo-labels: first computed a quarter into the run (the classifier has learned the source by
# then), refreshed every CLUSTER_EVERY steps.
CLUSTER_START_SHARE = 0.25
CLUSTER_EVERY = 100
# The class-weighted adversary's cap on a class's weight (a class the source barely has).
MAX_CLASS_WEIGHT = 10.0
# The neighbours term (frozen mode): how many nearest target rows each target row may be paired with.
NEIGHBOURS = 5

StepCallback = Callable[[int, int], None]  # (steps done, total), after every step
CheckpointCallback = Callable[[int], None]  # the step, once checkpoint.pt holds it (main process only)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss_curves.png"

    @property
    def pr_plot(self) -> Path:
        return self.root / "pr_curve.png"


@dataclass(frozen=True)
class EvalSets:
    """Optional labelled target data for the end-of-run evaluation."""

    queries: Path | None = None
    database: Path | None = None


@dataclass
class TrainResult:
    paths: RunPaths
    metrics: dict[str, Any]
    model_version: str
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str, group: ProcessGroup) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available")
        return torch.device("cuda", group.local_rank if name == "cuda" else int(name.split(":")[1]))
    return torch.device("cpu")


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        return float((1.0 + config.lr_gamma * step / config.steps) ** (-config.lr_power))

    return factor


def _write_history(rows: list[dict[str, float]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _check_resume(saved: dict[str, Any], config: TrainConfig) -> None:
    for key in ("method", "bits", "backbone", "mode", "batch_size"):
        if saved["config"].get(key) != getattr(config, key):
            raise CheckpointError(
                f"cannot resume: checkpoint has {key}={saved['config'].get(key)!r}, "
                f"this run asks for {getattr(config, key)!r}"
            )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread. The frozen heads' matrices are small: a second thread gains nothing and,
    with anything else running on the other core, its OpenMP barriers made steps several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def loader_workers(config: TrainConfig) -> int:
    """Decoding processes: as configured, or one per two CPU cores (at least one, at most four)."""
    if config.loader_workers >= 0:
        return config.loader_workers
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def augment_kind(config: TrainConfig) -> str | None:
    """The digit recipe (rotate, zoom, shift) for LeNet, photo augmentation for every other backbone."""
    if not config.augment:
        return None
    return "affine" if config.backbone == "lenet" else "photo"


@dataclass
class TrainingData:
    """The run's listed source and target files, and what the trainable module reads."""

    source: FileSet
    target: FileSet | None
    inputs: InMemoryImages | StreamedImages | CachedFeatures
    skipped: list[SkippedFile]
    cache: FeatureCache | None = None
    source_features: FeatureTable | None = None

    @property
    def batches(self) -> str:
        """Where batches come from (recorded in metrics.json): ``images_in_memory``, ``images_streamed``,
        ``features_in_memory`` or ``features_from_disk`` (some cached features did not fit the budget)."""
        inputs = self.inputs
        if isinstance(inputs, InMemoryImages):
            return "images_in_memory"
        if isinstance(inputs, StreamedImages):
            return "images_streamed"
        tables = [inputs.source, *([] if inputs.target is None else [inputs.target])]
        return "features_in_memory" if all(table.table is not None for table in tables) else "features_from_disk"


def feature_cache_for(config: TrainConfig, backbone: Backbone) -> FeatureCache:
    """The cache a frozen run of ``config`` reads: its folder (``feature_cache``, else the default) and its views'
    recipe (greyscale and drawing probabilities)."""
    root = Path(config.feature_cache) if config.feature_cache else default_cache_root()
    return FeatureCache(root, config.backbone, backbone, grey=config.feature_grey, drawing=config.feature_drawing)


def prepare_data(
    config: TrainConfig,
    backbone: Backbone,
    source: FileSet,
    target: FileSet | None,
    device: torch.device,
    show_progress: bool,
    group: ProcessGroup | None = None,
) -> TrainingData:
    """Choose where batches come from: cached features (frozen), memory, or a stream of files.

    Under DDP (``group``) a frozen run's ranks first compute the missing features between them, each a share of
    the files, and then every rank reads all of them from the cache.
    """
    group = group or ProcessGroup()
    workers = loader_workers(config)
    budget = config.memory_budget_mb * 2**20
    skipped = [*source.skipped, *(target.skipped if target is not None else [])]
    if config.mode == "frozen":
        if config.adapt_batch_norm:
            domains = [source] if target is None else [source, target]
            adapt_batch_norm(backbone, domains, device=device, workers=workers)
        cache = feature_cache_for(config, backbone)
        tables: list[FeatureTable | None] = []
        for name, files in (("source", source), ("target", target)):
            if files is None:
                tables.append(None)
                continue
            if group.enabled:
                share = files.take(np.arange(group.rank, len(files), group.world_size))
                extract_features(share, backbone, cache, config.feature_views, device=device, workers=workers)
                barrier(group)
            with tqdm(total=len(files), disable=not show_progress, desc=f"features ({name})", unit="img") as bar:

                def advance(done: int, total: int, bar: tqdm[Any] = bar) -> None:
                    bar.update(done - bar.n)

                keys, failed = extract_features(
                    files, backbone, cache, config.feature_views, device=device, workers=workers, on_batch=advance
                )
            kept = np.array([i for i, key in enumerate(keys) if key], dtype=np.int64)
            skipped.extend(failed)
            tables.append(FeatureTable(cache, [keys[i] for i in kept], config.feature_views, budget // 2))
            if name == "source":
                source = source.take(kept)
            elif target is not None:
                target = target.take(kept)
        source_table, target_table = tables
        assert source_table is not None
        inputs: InMemoryImages | StreamedImages | CachedFeatures = CachedFeatures(
            source_table, target_table, source.labels
        )
        return TrainingData(source, target, inputs, skipped, cache, source_table)
    height, width = backbone.input_size
    decoded_bytes = (len(source) + (len(target) if target is not None else 0)) * 3 * height * width
    if decoded_bytes <= budget:
        source_images = decode_files(source, backbone.input_size, "source")
        target_images = decode_files(target, backbone.input_size, "target") if target is not None else None
        inputs = InMemoryImages(source_images, target_images, device, augment_kind(config), config.augment_scale)
        decoded_source = FileSet(source_images.paths, source_images.labels, source.classes, [])
        decoded_target = None
        if target_images is not None:
            decoded_target = FileSet(target_images.paths, target_images.labels, [], [])
        skipped = [*source_images.skipped, *(target_images.skipped if target_images is not None else [])]
        return TrainingData(decoded_source, decoded_target, inputs, skipped)
    inputs = StreamedImages(source, target, backbone.input_size, augment_kind(config), workers)
    return TrainingData(source, target, inputs, skipped)


class Trainer:
    """Owns one run: data, network, optimiser, schedule and the run folder."""

    def __init__(
        self,
        config: TrainConfig,
        backbone: Backbone,
        data: TrainingData,
        paths: RunPaths,
        group: ProcessGroup,
        device: torch.device,
    ) -> None:
        self.config = config
        self.weights = config.weights
        self.backbone = backbone
        self.data = data
        self.paths = paths
        self.group = group
        self.device = device
        self.frozen = config.mode == "frozen"
        self.net = build_network(config, backbone, len(data.source.classes)).to(device)
        if self.frozen:
            self.net.backbone.requires_grad_(False).eval()
            self.trainable: nn.Module = self.net.heads
        else:
            # channels-last: the layout the exported artefact uses too (CPU convolutions favour it; not timed here)
            self.net = self.net.to(memory_format=torch.channels_last)
            self.trainable = self.net
        self.model: nn.Module = (
            DistributedDataParallel(self.trainable, device_ids=[device.index] if device.type == "cuda" else None)
            if group.enabled
            else self.trainable
        )
        self.optimizer = torch.optim.Adam(
            self._parameter_groups(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config))
        self.average = WeightEMA(self.trainable, config.applied_ema_decay) if config.ema_decay > 0 else None
        self.sampler = BatchSampler(config.seed * 1000 + group.rank)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.target_guess: torch.Tensor | None = None  # cluster pseudo-labels of the target rows
        self.class_weights: torch.Tensor | None = None  # the adversary's weight of a source row of each class
        # the diversity term's aim: the target's class shares as the user gave them, or as estimated (estimated_mix)
        given = config.class_mix(data.source.classes)
        self.target_mix: torch.Tensor | None = None if given is None else torch.tensor(given)
        self.target_neighbours: torch.Tensor | None = None  # [N, K] each target row's nearest target rows
        self.autocast = device.type == "cuda" and not self.frozen

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """Heads at ``lr``; in finetune mode the backbone too, at ``lr × backbone_lr_mult`` when pretrained."""
        heads = {"params": list(self.net.heads.parameters())}
        if self.frozen:
            return [heads]
        mult = self.config.backbone_lr_mult if self.backbone.pretrained else 1.0
        return [{"params": list(self.net.backbone.parameters()), "lr": self.config.learning_rate * mult}, heads]

    # --- state -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "classes": list(self.data.source.classes),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "sampler": self.sampler.state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "average": None if self.average is None else self.average.state_dict(),
            "average_of": "heads" if self.frozen else "network",
            "target_guess": self.target_guess,
            "class_weights": self.class_weights,
            "target_mix": self.target_mix,
        }

    def load_state(self, saved: dict[str, Any]) -> None:
        _check_resume(saved, self.config)
        if list(saved["classes"]) != list(self.data.source.classes):
            raise CheckpointError("cannot resume: the source classes differ from the checkpoint's")
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.step = int(saved["step"])
        self.sampler.load_state(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        self.history = list(saved["history"])
        self.target_guess = saved.get("target_guess")
        self.class_weights = saved.get("class_weights")
        self.target_mix = saved.get("target_mix")
        if self.average is not None:
            if saved.get("average") is None:
                raise CheckpointError("cannot resume: the checkpoint has no weight average (ema_decay was 0)")
            self.average.load_state_dict(saved["average"])

    # --- one step ----------------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The step's inputs, source labels, the target rows' cluster pseudo-labels and a neighbour of each target row
        (``neighbours`` term) when there are any."""
        inputs = self.data.inputs
        guess = neighbours = None
        if isinstance(inputs, StreamedImages):
            batch, labels = inputs.batch(self.config.batch_size)
        else:
            targets = inputs.sizes[1] if self.weights.uses_target else 0
            draw = draw_step(self.sampler, inputs.sizes[0], targets, self.config.batch_size)
            batch, labels = inputs.batch(draw, self.sampler)
            if self.target_guess is not None and draw.target.numel():
                guess = self.target_guess[draw.target].to(self.device)
            if self.weights.neighbours > 0 and draw.target.numel() and isinstance(inputs, CachedFeatures):
                neighbours = self._neighbour_rows(inputs, draw.target)
        batch, labels = batch.to(self.device, non_blocking=True), labels.to(self.device)
        if batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch, labels, guess, neighbours

    def _neighbour_rows(self, inputs: CachedFeatures, rows: torch.Tensor) -> torch.Tensor | None:
        """A random view of one of the ``NEIGHBOURS`` nearest target rows of each of ``rows`` (cosine over the plain
        views' frozen features, found at the first step; fewer when the target is smaller, none for one image)."""
        target = inputs.target
        assert target is not None  # a target is drawn
        if len(target) < 2:
            return None
        if self.target_neighbours is None:
            self.target_neighbours = nearest_rows(torch.cat(list(target.plain())), min(NEIGHBOURS, len(target) - 1))
        found = self.target_neighbours.shape[1]
        chosen = self.target_neighbours[rows, self.sampler.integers(found, len(rows))]
        return target.gather(chosen, self.sampler.integers(target.views, len(rows))).to(self.device)

    def _refresh_estimates(self) -> None:
        """Recompute what the loss reads about the whole target set when the schedule says so: the rows' cluster
        pseudo-labels (``cluster`` weight), the adversary's class weights (``class_weighted_adversary``: the
        classifier's mean class probabilities over the target over the source's class shares, at most
        ``MAX_CLASS_WEIGHT``) and the target's class mix the diversity term aims at (``estimated_mix``)."""
        start = int(self.config.steps * CLUSTER_START_SHARE)
        weights = self.weights
        wanted = (
            weights.cluster > 0
            or (weights.class_weighted_adversary and weights.needs_discriminator)
            or (weights.estimated_mix and weights.diversity > 0)
        )
        if not wanted or self.step < start or (self.step - start) % CLUSTER_EVERY:
            return
        inputs = self.data.inputs
        assert isinstance(inputs, CachedFeatures)  # checked by train()
        assert inputs.target is not None
        heads = self.net.heads
        assert heads.classifier is not None
        heads.eval()
        with torch.no_grad():
            codes = torch.cat([heads.hash(batch.to(self.device)) for batch in inputs.target.plain()])
            logits = heads.classifier(codes)
            if weights.cluster > 0:
                self.target_guess = centroid_labels(codes, logits).cpu()
            probabilities = torch.softmax(logits, dim=1).cpu()
            source_share = torch.bincount(inputs.labels, minlength=logits.shape[1]).float() / len(inputs.labels)
            if weights.class_weighted_adversary:
                mix = probabilities.mean(0)
                self.class_weights = (mix / source_share.clamp_min(1e-12)).clamp(max=MAX_CLASS_WEIGHT)
            if weights.estimated_mix:
                self.target_mix = estimate_class_mix(probabilities, source_share)
        heads.train()

    def train_step(self) -> dict[str, float]:
        self.trainable.train()
        if self.frozen:
            self.net.backbone.eval()
        self._refresh_estimates()
        images, labels, guess, neighbours = self._batch()
        grl = self.net.heads.grl
        ramp = grl.coeff
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext():
            out = self.model(images)
        out = type(out)(*(None if value is None else value.float() for value in out))
        neighbour_logits = None if neighbours is None else self.model(neighbours).class_logits
        loss, values = compute_objective(
            out, labels, self.weights, ramp, guess, self.class_weights, neighbour_logits, self.target_mix
        )
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"loss became {values['loss']} at step {self.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.trainable)
        values["lr"] = self.optimizer.param_groups[-1]["lr"]
        values["grl_coeff"] = ramp
        self.scheduler.step()
        grl.advance()
        self.step += 1
        return values

    def run(
        self,
        on_step: StepCallback | None = None,
        show_progress: bool | None = None,
        on_checkpoint: CheckpointCallback | None = None,
    ) -> None:
        total = self.config.steps
        visible = self.group.is_main and (sys.stderr.isatty() if show_progress is None else show_progress)
        if isinstance(self.data.inputs, StreamedImages):
            self.data.inputs.start(self.sampler, self.config.batch_size, total - self.step, self.config.seed)
        try:
            with (
                tqdm(total=total, initial=self.step, disable=not visible, desc="train", unit="step") as bar,
                one_thread() if self.frozen else contextlib.nullcontext(),
            ):
                while self.step < total:
                    values = self.train_step()
                    if self.step % self.config.log_every == 0 or self.step == total:
                        self.history.append({"step": float(self.step), **values})
                        bar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
                    if self.group.is_main and self.step % self.config.checkpoint_interval == 0 and self.step < total:
                        save_checkpoint(self.paths.checkpoint, self.state())
                        if on_checkpoint is not None:
                            on_checkpoint(self.step)
                    bar.update(1)
                    if on_step is not None:
                        on_step(self.step, total)
        finally:
            if isinstance(self.data.inputs, StreamedImages):
                self.data.inputs.stop()  # its workers must not outlive training

    # --- end of run --------------------------------------------------------------------------------
    @property
    def final(self) -> MeTAHNet:
        """The network that is evaluated and exported: the weight average, or the last iterate."""
        if self.average is None:
            return self.net
        averaged = self.average.module
        return self.net.with_heads(averaged) if self.frozen else averaged  # type: ignore[arg-type,return-value]

    @torch.no_grad()
    def codes(self, files: FileSet, table: FeatureTable | None = None) -> np.ndarray:
        """±1 codes of ``files`` under the final network: from cached view-0 features (frozen), else images."""
        final = self.final.eval()
        if not self.frozen:
            return encode_files(
                final.encoder(),
                files,
                self.backbone.input_size,
                workers=loader_workers(self.config),
                device=self.device,
            )
        if table is None:
            assert self.data.cache is not None
            keys, _ = extract_features(
                files, self.backbone, self.data.cache, 1, device=self.device, workers=loader_workers(self.config)
            )
            table = FeatureTable(self.data.cache, keys, 1, self.config.memory_budget_mb * 2**20)
        projection = final.heads.hash.projection()
        chunks = [projection(batch.to(self.device)) for batch in table.plain()]
        z = torch.cat(chunks).cpu()
        return torch.where(z > 0, 1.0, -1.0).numpy()

    def evaluate(self, eval_sets: EvalSets) -> dict[str, RetrievalMetrics]:
        """Score the encoder on the protocols the available labelled data allows."""
        source = self.data.source
        source_codes = self.codes(source, self.data.source_features)
        (source_labels,) = shared_label_ids(source)
        results: dict[str, RetrievalMetrics] = {}
        generator = np.random.default_rng(self.config.seed)
        count = min(self.config.eval_queries, max(1, len(source) // 10))
        chosen = generator.choice(len(source), size=count, replace=False)
        rest = np.setdiff1d(np.arange(len(source)), chosen)
        results["source_vs_source"] = evaluate_retrieval(
            source_codes[chosen], source_labels[chosen], source_codes[rest], source_labels[rest]
        )
        if eval_sets.queries is not None:
            queries = list_labelled_folder(eval_sets.queries, what="evaluation query")
            query_codes = self.codes(queries)
            query_labels, database_labels = shared_label_ids(queries, source)
            results["target_vs_source"] = evaluate_retrieval(query_codes, query_labels, source_codes, database_labels)
            if eval_sets.database is not None:
                database = list_labelled_folder(eval_sets.database, what="evaluation database")
                query_labels, database_labels = shared_label_ids(queries, database)
                results["target_vs_target"] = evaluate_retrieval(
                    query_codes, query_labels, self.codes(database), database_labels
                )
        return results


def _summary(metrics: RetrievalMetrics) -> dict[str, Any]:
    data = metrics.to_dict()
    data.pop("pr_curve", None)
    return data


def train(
    config: TrainConfig,
    source_dir: Path,
    target_dir: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    eval_sets: EvalSets | None = None,
    on_step: StepCallback | None = None,
    show_progress: bool | None = None,
    on_checkpoint: CheckpointCallback | None = None,
) -> TrainResult:
    """Train an encoder on a labelled source folder and an unlabelled target folder; write the run folder.

    ``on_step`` is called after every step; ``on_checkpoint`` each time ``checkpoint.pt`` has been written
    during the run (every ``checkpoint_every`` steps, by the main process; not for the one written at the end),
    e.g. to copy it elsewhere.

    Raises:
        ConfigError, DataError, CheckpointError: user mistakes, before any training step.
    """
    config = config.validated()
    paths = RunPaths(out_dir)
    started = time.perf_counter()
    use_cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    group = init_process_group(use_cuda)
    try:
        device = resolve_device(config.device, group)
        if group.enabled and device.type == "cpu":
            torch.set_num_threads(max(1, torch.get_num_threads() // group.world_size))
        torch.manual_seed(config.seed)
        source = list_labelled_folder(source_dir, what="source")
        target = list_unlabelled_folder(target_dir, what="target")
        chosen = choose_backbone(config, source)
        backbone = load_backbone(chosen.config)
        mode = choose_mode(chosen.config, backbone, device)
        config = mode.config
        frozen_only = (
            (config.weights.cluster > 0, "the cluster loss", "it labels every cached target feature"),
            (
                config.weights.class_weighted_adversary,
                "the class-weighted adversary",
                "it reads every cached target row",
            ),
            (config.weights.neighbours > 0, "the neighbours term", "it pairs cached target features"),
            (config.weights.estimated_mix, "the estimated class mix", "it reads every cached target row"),
        )
        for used, what, why in frozen_only:
            if used and config.mode != "frozen":
                raise ConfigError(f"{what} needs the frozen mode ({why})")
        config.class_mix(source.classes)  # a given class mix names the source's classes (before any work)
        choices = [chosen.reason, mode.reason]
        if group.is_main:
            for line in choices:
                log.info("%s", line)
        visible = group.is_main and (sys.stderr.isatty() if show_progress is None else show_progress)
        data = prepare_data(config, backbone, source, target, device, visible, group)
        if group.is_main:
            log.info("batches: %s (memory budget %d MB)", data.batches.replace("_", " "), config.memory_budget_mb)
        skipped = report_skipped(data.skipped) if group.is_main else []
        trainer = Trainer(config, backbone, data, paths, group, device)
        if resume and paths.checkpoint.exists():
            trainer.load_state(load_checkpoint(paths.checkpoint))
            log.info("resumed from %s at step %d", paths.checkpoint, trainer.step)
        paths.root.mkdir(parents=True, exist_ok=True)
        trainer.run(on_step, show_progress, on_checkpoint)
        in_sync = parameters_in_sync(trainer.net, group)
        summary = RunSummary(skipped, choices, in_sync, time.perf_counter() - started)
        result = _finish(trainer, eval_sets or EvalSets(), summary)
        barrier(group)
        return result
    finally:
        destroy_process_group(group)


@dataclass(frozen=True)
class RunSummary:
    skipped: list[str]
    choices: list[str]
    ddp_in_sync: bool
    seconds: float


def _finish(trainer: Trainer, eval_sets: EvalSets, summary: RunSummary) -> TrainResult:
    """Evaluate, export and write the run folder (main process only)."""
    config, paths, group = trainer.config, trainer.paths, trainer.group
    if not group.is_main:
        return TrainResult(paths, {}, "", trainer.history)
    evaluations = trainer.evaluate(eval_sets)
    created_at = utc_now()
    encoder = trainer.final.encoder()
    version = new_model_version(config.method, config.bits, encoder, created_at)
    metrics: dict[str, Any] = {
        "model_version": version,
        "method": config.method,
        "bits": config.bits,
        "backbone": config.backbone,
        "mode": config.mode,
        "choices": summary.choices,
        "batches": trainer.data.batches,
        "iterations": config.steps,
        "lr": config.learning_rate,
        "seed": config.seed,
        "world_size": group.world_size,
        "device": str(trainer.device),
        "ddp_parameters_in_sync": summary.ddp_in_sync,
        "train_seconds": round(summary.seconds, 2),
        "source_images": len(trainer.data.source),
        "target_images": 0 if trainer.data.target is None else len(trainer.data.target),
        "final_losses": trainer.history[-1] if trainer.history else {},
        "evaluation": {name: _summary(value) for name, value in evaluations.items()},
        "skipped_files": summary.skipped[:100],
        "skipped_count": len(summary.skipped),
    }
    metadata = {
        "bits": config.bits,
        "input_size": list(trainer.backbone.input_size),
        "backbone": config.backbone,
        "mode": config.mode,
        "method": config.method,
        "classes": list(trainer.data.source.classes),
        "model_version": version,
        "created_at": created_at.isoformat(),
        "mean": list(trainer.final.normalize.mean.flatten().tolist()),
        "std": list(trainer.final.normalize.std.flatten().tolist()),
        "config": config.to_dict(),
        "metrics": {key: metrics[key] for key in ("evaluation", "train_seconds", "iterations", "seed")},
    }
    export_encoder(encoder, metadata, paths.model)
    save_checkpoint(paths.checkpoint, {**trainer.state(), "metadata": metadata})
    paths.metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    _write_history(trainer.history, paths.history)
    plot_history(trainer.history, paths.loss_plot, title=f"{config.method}, {config.bits} bits")
    plot_pr_curves({name: value.pr_curve for name, value in evaluations.items()}, paths.pr_plot)
    if summary.skipped:
        log.warning("%d file(s) skipped as unreadable; see metrics.json", len(summary.skipped))
    return TrainResult(paths, metrics, version, trainer.history)
