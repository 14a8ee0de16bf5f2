"""Partial fine-tuning on the CPU: does training EfficientNet-Lite0's head convolution after the frozen run help?

The frozen photo default trains the heads on pooled features; Lite0's head convolution (1×1, 320 → 1,280 channels,
its batch norm and ReLU6, then average pooling) stays as ImageNet left it. Fine-tuning the whole backbone on a GPU
scores far higher on photo → cartoon (``benchmarks/retrieval-gpu``), and on two CPU cores only the last layers can
train at all. This probe caches what enters that convolution (the last inverted-residual block's ``320 × 7 × 7``
output, float16) for the plain image and one augmented view of every PACS photo, cartoon and sketch (the product's
view recipe, :func:`model.features.draw_views`), then continues each benchmark run of the frozen MeTAH default
(``scripts.bench --split-protocol 2``, whose checkpoints ``--work`` holds) for ``--steps`` steps, three arms from
the same start and with the same draws:

* ``heads``: the heads alone (the control: what more steps give);
* ``tail``: the heads and the head convolution with its batch norm's scale and shift (its statistics kept), at the
  same learning rate;
* ``tail-0.1``: the same at a tenth of the heads' learning rate for the tail (the finetune mode's
  ``backbone_lr_mult``).

Each arm is scored on the validation queries only (the target's shared validation tenth against the photo
database, codes of the plain view, as the exported encoder computes them); no test query is read.

    .venv/bin/python -m scripts.probe_tail --pacs ../shared/data/pacs --work var/bench-split2 \\
        --out benchmarks/retrieval-tail/probe

Taps are kept in ``--taps`` (one ``.npz`` per domain; a domain already there is not computed again). Writes
``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn

from model.backbones import build_backbone
from model.batches import BatchSampler, draw_step
from model.config import TrainConfig
from model.data import list_labelled_folder
from model.evaluate import shared_label_ids
from model.factory import restore_network
from model.features import content_key, draw_views
from model.metrics import evaluate_retrieval
from model.network import Heads
from model.normalize import Normalize
from model.objective import compute_objective
from model.preprocess import decode_image
from scripts.bench import TASKS, Settings, Split, product_choice, signs, task_files
from scripts.bench_stats import format_mean_std
from scripts.probe_features import features_by_domain
from workbench.machine import machine
from workbench.output import generated_by, write_results

# the frozen default's views (TrainConfig.feature_views: the plain image and one augmented view) and their recipe
VIEW_RECIPE = TrainConfig()
VIEWS = VIEW_RECIPE.feature_views
# arm -> the tail's learning rate as a multiple of the heads' (None: the tail stays frozen)
ARMS: dict[str, float | None] = {"heads": None, "tail": 1.0, "tail-0.1": 0.1}


def efficientnet(module: nn.Module) -> EfficientNet:
    assert isinstance(module, EfficientNet)
    return module


def lite0() -> EfficientNet:
    return efficientnet(build_backbone("efficientnet_lite0").module.eval())


def extract(folder: Path, out: Path) -> tuple[str, int]:
    """The head convolution's input for :data:`VIEWS` views of every image of one domain → ``out`` (npz)."""
    torch.set_num_threads(1)
    backbone = build_backbone("efficientnet_lite0")
    module = efficientnet(backbone.module.eval())
    normalize = Normalize(backbone.mean, backbone.std)
    files = list_labelled_folder(folder, what=folder.name)
    taps = np.zeros((len(files.paths), VIEWS, module.conv_head.in_channels, 7, 7), np.float16)
    with torch.no_grad():
        for row, path in enumerate(files.paths):
            data = path.read_bytes()
            image = torch.from_numpy(decode_image(data, backbone.input_size)).permute(2, 0, 1)
            views = draw_views(
                image, content_key(data), 0, VIEWS, grey=VIEW_RECIPE.feature_grey, drawing=VIEW_RECIPE.feature_drawing
            )
            x = module.bn1(module.conv_stem(normalize(views.float().div(255.0))))
            taps[row] = module.blocks(x).numpy()
    np.savez(out, taps=taps, labels=files.labels.numpy())
    return folder.name, len(files.paths)


class Tail(nn.Module):
    """Lite0's head convolution, its batch norm (statistics frozen) and ReLU6, and average pooling.

    Shape:
        taps: ``[N, 320, 7, 7]`` → ``[N, 1280]``, the frozen backbone's features when untrained.
    """

    def __init__(self, module: EfficientNet) -> None:
        super().__init__()
        self.conv = copy.deepcopy(module.conv_head)
        self.norm = copy.deepcopy(module.bn2)

    def train(self, mode: bool = True) -> Tail:
        super().train(mode)
        self.norm.eval()  # the ImageNet statistics stay; only the scale and shift may train
        return self

    def forward(self, taps: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.norm(self.conv(taps.float())).mean((2, 3))
        return features


@dataclass(frozen=True)
class TaskTaps:
    """One task's cached taps (source and target, in the PACS folders' order), their labels and the classes."""

    source: torch.Tensor
    target: torch.Tensor
    source_labels: np.ndarray
    target_labels: np.ndarray
    classes: list[str]


def benchmark_settings(args: argparse.Namespace) -> Settings:
    """The settings of the benchmark whose runs the probes read (its work folder, split protocol 2)."""
    return Settings(args.work, args.pacs, args.work, None, "cpu", 1, 0, split_protocol=2)


def task_taps(task: str, args: argparse.Namespace) -> TaskTaps:
    files = task_files(task, args.work, args.pacs)
    target_labels, source_labels = shared_label_ids(files.target, files.source)
    source, target = (
        torch.from_numpy(np.load(args.taps / f"{domain}.npz")["taps"])
        for domain in (TASKS[task].source, TASKS[task].target)
    )
    if len(source) != len(source_labels) or len(target) != len(target_labels):
        raise SystemExit(f"{task}: the cached taps do not match the PACS folders; delete {args.taps} and re-run")
    return TaskTaps(source, target, source_labels, target_labels, list(files.source.classes))


def over_plain_views(function: Callable[[torch.Tensor], torch.Tensor], taps: torch.Tensor) -> torch.Tensor:
    """``function`` of the plain views (view 0 of ``[N, views, 320, 7, 7]`` taps), 256 at a time, without gradients;
    the rows concatenated in the taps' order."""
    with torch.no_grad():
        return torch.cat([function(taps[start : start + 256, 0]) for start in range(0, len(taps), 256)])


def codes(heads: Heads, tail: Tail, taps: torch.Tensor) -> np.ndarray:
    """±1 codes of the plain views, as the exported encoder computes them."""
    heads.eval()
    tail.eval()
    projection = heads.hash.projection()
    return signs(over_plain_views(lambda views: projection(tail(views)), taps))


def validation_map(heads: Heads, tail: Tail, taps: TaskTaps, validation: np.ndarray) -> float:
    """MAP@all of the plain views' codes: the ``validation`` target rows against every source image."""
    source, target = codes(heads, tail, taps.source), codes(heads, tail, taps.target)
    metrics = evaluate_retrieval(target[validation], taps.target_labels[validation], source, taps.source_labels)
    return float(metrics.map_all)


def continue_run(
    arm: str, checkpoint: Path, taps: TaskTaps, split: Split, steps: int, lr: float, seed: int
) -> dict[str, Any]:
    """Train the checkpoint's (averaged) heads, and in the ``tail`` arms the tail too, for ``steps`` Adam steps at a
    constant ``lr`` on the source and the split's unlabelled target rows (the adversary's reversal stays at the
    run's final strength); score the split's validation rows before and after."""
    torch.manual_seed(seed)  # the heads' dropout: the same in every arm
    restored = restore_network(checkpoint)
    heads, weights = restored.net.heads, restored.config.weights
    tail = Tail(lite0())
    tail_mult = ARMS[arm]
    tail.requires_grad_(tail_mult is not None)
    before = validation_map(heads, tail, taps, split.validation)
    groups: list[dict[str, Any]] = [{"params": list(heads.parameters())}]
    if tail_mult is not None:
        groups.append({"params": list(tail.parameters()), "lr": lr * tail_mult})
    optimizer = torch.optim.Adam(groups, lr=lr)
    sampler = BatchSampler(seed)
    source, target, labels = taps.source, taps.target, torch.from_numpy(taps.source_labels).long()
    train_rows = torch.from_numpy(split.train)
    batch = restored.config.batch_size
    started = time.perf_counter()
    for _ in range(steps):
        heads.train()
        tail.train()
        draw = draw_step(sampler, len(source), len(train_rows), batch)
        rows = train_rows[draw.target]
        views = sampler.integers(VIEWS, 2 * batch)
        inputs = torch.cat([source[draw.source, views[:batch]], target[rows, views[batch:]]])
        with torch.set_grad_enabled(tail_mult is not None):
            features = tail(inputs)
        loss, _ = compute_objective(heads(features), labels[draw.source], weights, heads.grl.coeff)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = (time.perf_counter() - started) / steps
    return {"before": before, "after": validation_map(heads, tail, taps, split.validation), "seconds_per_step": seconds}


def probe_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options every probe of the frozen benchmark runs takes (``out``: the default report path)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--pacs", type=Path, default=Path("../shared/data/pacs"))
    parser.add_argument("--work", type=Path, default=Path("var/bench-split2"), help="scripts.bench's work folder")
    parser.add_argument("--taps", type=Path, default=Path("var/probe-tail"))
    parser.add_argument("--tasks", nargs="+", default=["photo-cartoon", "photo-sketch"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def probe_run(task: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every arm for one benchmark run (one task and seed), in this process on one thread."""
    torch.set_num_threads(1)
    settings = benchmark_settings(args)
    taps, split = task_taps(task, args), settings.split(task, seed)
    variant = product_choice("frozen")["frozen", "metah"]
    checkpoint = settings.run_dir(f"{task}/metah/64/{seed}/{variant}") / "checkpoint.pt"
    if not checkpoint.exists():
        raise SystemExit(f"no benchmark run at {checkpoint}: run scripts.bench --split-protocol 2 first")
    return [
        {
            "task": task,
            "seed": seed,
            "arm": arm,
            **continue_run(arm, checkpoint, taps, split, args.steps, args.lr, seed),
        }
        for arm in ARMS
    ]


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Partial fine-tuning on the CPU: Lite0's head convolution trained after the frozen run",
        "",
        f"{generated_by(results)} Each benchmark run of the frozen MeTAH default (split protocol 2, 64 bits) "
        f"continued for {results['steps']} steps at a constant learning rate {results['lr']:g}: the heads alone, "
        "or the heads and the head convolution (at the same rate, `tail`, or a tenth of it, `tail-0.1`). "
        "**Validation** MAP@all (target validation queries against the photo database); Δ: after minus the run's "
        "own score; mean ± sample std over the seeds.",
        "",
        "| task | arm | seeds | run's own | after | Δ | Δ per seed | s / step (1 thread) |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for task in results["tasks"]:
        for arm in ARMS:
            rows = [row for row in results["runs"] if row["task"] == task and row["arm"] == arm]
            deltas = [row["after"] - row["before"] for row in rows]
            lines.append(
                f"| {task} | {arm} | {len(rows)} | {statistics.mean(r['before'] for r in rows):.4f} "
                f"| {statistics.mean(r['after'] for r in rows):.4f} | {format_mean_std(deltas, signed=True)} "
                f"| {', '.join(f'{d:+.3f}' for d in deltas)} "
                f"| {statistics.mean(r['seconds_per_step'] for r in rows):.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = probe_parser(__doc__.split("\n\n")[0], "benchmarks/retrieval-tail/probe")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args(argv)
    features_by_domain(extract, args.pacs, args.taps, args.processes)
    tasks = [task for task in args.tasks for _ in args.seeds]
    seeds = [seed for _ in args.tasks for seed in args.seeds]
    with ProcessPoolExecutor(args.processes, mp_context=get_context("spawn")) as pool:
        runs = [row for rows in pool.map(probe_run, tasks, seeds, [args] * len(tasks)) for row in rows]
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "python -m scripts.probe_tail " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "tasks": args.tasks,
        "steps": args.steps,
        "lr": args.lr,
        "runs": runs,
    }
    write_results(args.out, results, report(results))


if __name__ == "__main__":
    main()
