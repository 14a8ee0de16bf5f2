"""The one training loop for every method (``source_only``, ``tah``, ``metah``).

A run folder holds ``model.pt`` (the encoder artefact), ``checkpoint.pt`` (resumable), ``metrics.json``,
``history.csv``, ``loss_curves.png`` and ``pr_curve.png``. The same code runs on CPU, on CUDA, and under
``torchrun --nproc_per_node=N`` (DistributedDataParallel, gloo on CPU / NCCL on CUDA); under DDP each
process draws its own batches, so one step sees ``N × batch_size`` images of each domain.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.augment import random_affine
from model.backbones import Backbone
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import TrainConfig
from model.data import ImageSet, load_labelled_folder, load_unlabelled_folder, report_skipped
from model.distributed import (
    ProcessGroup,
    barrier,
    destroy_process_group,
    init_process_group,
    parameters_in_sync,
)
from model.ema import WeightAverage
from model.errors import CheckpointError, ConfigError
from model.evaluate import score
from model.export import export_encoder, new_model_version, utc_now
from model.factory import build_network, load_backbone
from model.metrics import RetrievalMetrics
from model.network import MeTAHNet
from model.objective import compute_objective
from model.plots import plot_history, plot_pr_curves
from model.preprocess import to_model_input

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]


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


class BatchSampler:
    """Seeded uniform batches without replacement inside a batch; its state resumes exactly."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def draw(self, population: int, size: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.choice(population, size=size, replace=population < size))

    def state(self) -> dict[str, Any]:
        return dict(self.rng.bit_generator.state)

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


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
        return float((1.0 + config.lr_gamma * step / config.iterations) ** (-config.lr_power))

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
    for key in ("method", "bits", "backbone", "batch_size"):
        if saved["config"].get(key) != getattr(config, key):
            raise CheckpointError(
                f"cannot resume: checkpoint has {key}={saved['config'].get(key)!r}, "
                f"this run asks for {getattr(config, key)!r}"
            )


class Trainer:
    """Owns one run: data, network, optimiser, schedule and the run folder."""

    def __init__(
        self,
        config: TrainConfig,
        backbone: Backbone,
        source: ImageSet,
        target: ImageSet | None,
        paths: RunPaths,
        group: ProcessGroup,
        device: torch.device,
    ) -> None:
        self.config = config
        self.weights = config.weights
        self.source = source
        self.target = target
        self.paths = paths
        self.group = group
        self.device = device
        # channels-last convolutions ran about 1.5x faster on this project's 2-core CPU (README benchmark)
        self.net = build_network(config, backbone, len(source.classes)).to(device)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.model: nn.Module = (
            DistributedDataParallel(self.net, device_ids=[device.index] if device.type == "cuda" else None)
            if group.enabled
            else self.net
        )
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config))
        self.average = WeightAverage(self.net, config.average_decay) if config.ema_decay > 0 else None
        self.sampler = BatchSampler(config.seed * 1000 + group.rank)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.source_images = source.images.to(device)
        self.source_labels = source.labels.to(device)
        self.target_images = target.images.to(device) if target is not None else None

    # --- state -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "classes": list(self.source.classes),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "sampler": self.sampler.state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "average": None if self.average is None else self.average.state_dict(),
        }

    def load_state(self, saved: dict[str, Any]) -> None:
        _check_resume(saved, self.config)
        if list(saved["classes"]) != list(self.source.classes):
            raise CheckpointError("cannot resume: the source classes differ from the checkpoint's")
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.step = int(saved["step"])
        self.sampler.load_state(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        self.history = list(saved["history"])
        if self.average is not None:
            if saved.get("average") is None:
                raise CheckpointError("cannot resume: the checkpoint has no weight average (ema_decay was 0)")
            self.average.load_state_dict(saved["average"])

    # --- one step ----------------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.batch_size
        source_idx = self.sampler.draw(len(self.source), size).to(self.device)
        images = [self.source_images[source_idx]]
        if self.weights.uses_target and self.target_images is not None:
            target_idx = self.sampler.draw(self.target_images.shape[0], size).to(self.device)
            images.append(self.target_images[target_idx])
        batch = to_model_input(torch.cat(images))
        if self.config.augment:
            batch = random_affine(batch, scale=self.config.augment_scale)
        return batch.contiguous(memory_format=torch.channels_last), self.source_labels[source_idx]

    def train_step(self) -> dict[str, float]:
        self.model.train()
        images, labels = self._batch()
        ramp = self.net.grl.coeff
        out = self.model(images)
        loss, values = compute_objective(out, labels, self.weights, ramp)
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"loss became {values['loss']} at step {self.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.net)
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        values["grl_coeff"] = ramp
        self.scheduler.step()
        self.net.grl.advance()
        self.step += 1
        return values

    def run(self, on_step: StepCallback | None = None, show_progress: bool | None = None) -> None:
        total = self.config.iterations
        visible = self.group.is_main and (sys.stderr.isatty() if show_progress is None else show_progress)
        with tqdm(total=total, initial=self.step, disable=not visible, desc="train", unit="step") as bar:
            while self.step < total:
                values = self.train_step()
                if self.step % self.config.log_every == 0 or self.step == total:
                    self.history.append({"step": float(self.step), **values})
                    bar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
                if self.group.is_main and self.step % self.config.checkpoint_every == 0 and self.step < total:
                    save_checkpoint(self.paths.checkpoint, self.state())
                bar.update(1)
                if on_step is not None:
                    on_step(self.step, total)

    # --- end of run --------------------------------------------------------------------------------
    @property
    def final(self) -> MeTAHNet:
        """The network that is evaluated and exported: the weight average, or the last iterate."""
        return self.net if self.average is None else self.average.module

    @torch.no_grad()
    def evaluate(self, eval_sets: EvalSets) -> dict[str, RetrievalMetrics]:
        """Score the encoder on the protocols the available labelled data allows."""
        encoder = self.final.encoder().eval()
        size = (self.source.images.shape[2], self.source.images.shape[3])
        results: dict[str, RetrievalMetrics] = {}
        generator = np.random.default_rng(self.config.seed)
        count = min(self.config.eval_queries, max(1, len(self.source) // 10))
        chosen = generator.choice(len(self.source), size=count, replace=False)
        rest = np.setdiff1d(np.arange(len(self.source)), chosen)
        results["source_vs_source"] = score(
            encoder, _subset(self.source, chosen), _subset(self.source, rest), self.device
        )
        if eval_sets.queries is not None:
            queries = load_labelled_folder(eval_sets.queries, size, what="evaluation query")
            results["target_vs_source"] = score(encoder, queries, self.source, self.device)
            if eval_sets.database is not None:
                database = load_labelled_folder(eval_sets.database, size, what="evaluation database")
                results["target_vs_target"] = score(encoder, queries, database, self.device)
        return results


def _subset(image_set: ImageSet, index: np.ndarray) -> ImageSet:
    picked = torch.from_numpy(index)
    return ImageSet(
        images=image_set.images[picked],
        labels=image_set.labels[picked],
        paths=[image_set.paths[i] for i in index],
        classes=image_set.classes,
    )


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
) -> TrainResult:
    """Train an encoder on a labelled source folder and an unlabelled target folder; write the run folder.

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
        backbone = load_backbone(config)
        source = load_labelled_folder(source_dir, backbone.input_size, what="source")
        target = load_unlabelled_folder(target_dir, backbone.input_size, what="target")
        skipped = report_skipped([*source.skipped, *target.skipped]) if group.is_main else []
        trainer = Trainer(config, backbone, source, target, paths, group, device)
        if resume and paths.checkpoint.exists():
            trainer.load_state(load_checkpoint(paths.checkpoint))
            log.info("resumed from %s at step %d", paths.checkpoint, trainer.step)
        paths.root.mkdir(parents=True, exist_ok=True)
        trainer.run(on_step, show_progress)
        in_sync = parameters_in_sync(trainer.net, group)
        result = _finish(trainer, eval_sets or EvalSets(), skipped, in_sync, time.perf_counter() - started)
        barrier(group)
        return result
    finally:
        destroy_process_group(group)


def _finish(trainer: Trainer, eval_sets: EvalSets, skipped: list[str], in_sync: bool, seconds: float) -> TrainResult:
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
        "iterations": config.iterations,
        "seed": config.seed,
        "world_size": group.world_size,
        "device": str(trainer.device),
        "ddp_parameters_in_sync": in_sync,
        "train_seconds": round(seconds, 2),
        "source_images": len(trainer.source),
        "target_images": 0 if trainer.target is None else len(trainer.target),
        "final_losses": trainer.history[-1] if trainer.history else {},
        "evaluation": {name: _summary(value) for name, value in evaluations.items()},
        "skipped_files": skipped[:100],
        "skipped_count": len(skipped),
    }
    metadata = {
        "bits": config.bits,
        "input_size": list(trainer.source.images.shape[2:]),
        "backbone": config.backbone,
        "method": config.method,
        "classes": list(trainer.source.classes),
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
    if skipped:
        log.warning("%d file(s) skipped as unreadable; see metrics.json", len(skipped))
    return TrainResult(paths, metrics, version, trainer.history)
