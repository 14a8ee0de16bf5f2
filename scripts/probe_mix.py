"""Which classes does MeTAH file the unlabelled photo-task images under, and how does that depend on the aim of
its diversity term? A probe of the seed-stability sweep's runs.

The sweep (``scripts.bench_knobs --split-protocol 2 --seeds 0 … 5``, ``benchmarks/retrieval-knobs-split2``) trained
the neighbours default and changes of its diversity term on each seed; their checkpoints are in ``--work``. Each
run's classifier labels the plain-view frozen features of **its own unlabelled training images** (the 80 % it
trained on), whose labels are counted here only to describe the outcome: the share of images the classifier puts
in each class against the class's true share, and each class's recall. No test or validation query is read; the
validation MAP@all next to each run is the sweep's own raw line.

    .venv/bin/python -m scripts.probe_mix --pacs ../shared/data/pacs --work var/bench-split2 \\
        --out benchmarks/retrieval-knobs-split2/mix

Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.factory import restore_network
from model.network import Heads
from scripts.bench import Settings, photo_features, read_lines, task_files
from scripts.bench_knobs import FROZEN_DEFAULT, SWEEP_WEIGHTS
from workbench.machine import machine
from workbench.output import generated_by, write_results

TASKS = ("photo-cartoon", "photo-sketch")
# the sweep's changes probed: name -> how the report calls it
CHANGES = {
    f"{FROZEN_DEFAULT},neighbours=0.3,diversity=1": "equal shares (the default: diversity 1)",
    f"{FROZEN_DEFAULT},neighbours=0.3,diversity=0.5": "equal shares, diversity 0.5",
    f"{FROZEN_DEFAULT},neighbours=0.3": "equal shares, diversity 0.3",
    f"{FROZEN_DEFAULT},neighbours=0.3,diversity=1,estimated_mix": "the EM-estimated mix",
    f"{FROZEN_DEFAULT},neighbours=0.3,diversity=1,true_target_mix": "the true mix (oracle)",
}


def restore_heads(checkpoint: Path) -> Heads:
    """A sweep run's heads (hash layer and classifier), in evaluation mode."""
    return restore_network(checkpoint).net.eval().heads


def classify(heads: Heads, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes (relaxed) and class logits of ``heads`` for frozen ``features``."""
    assert heads.classifier is not None  # MeTAH's heads have one
    with torch.no_grad():
        codes = heads.hash(features.float())
        return codes, heads.classifier(codes)


def probe_run(checkpoint: Path, features: torch.Tensor, labels: np.ndarray, classes: int) -> dict[str, Any]:
    """Predicted class shares and per-class recall of one run's classifier on ``features`` (labels: ``labels``)."""
    predicted = classify(restore_heads(checkpoint), features)[1].argmax(dim=1).numpy()
    return outcome(predicted, labels, classes)


def outcome(predicted: np.ndarray, labels: np.ndarray, classes: int) -> dict[str, Any]:
    """Accuracy, the share of images predicted as each class and each class's recall (0 for an absent class)."""
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "accuracy": float((predicted == labels).mean()),
        "predicted_share": (confusion.sum(axis=0) / len(labels)).tolist(),
        "recall": (confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)).tolist(),
    }


def sweep_settings(args: argparse.Namespace) -> Settings:
    """The benchmark's settings for reading the seed-stability sweep's runs (split protocol 2) and features."""
    return Settings(args.work, args.pacs, args.cache, None, "auto", 1, 0, split_protocol=2)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    settings = sweep_settings(args)
    sweep = [r for r in read_lines(args.sweep / "runs.jsonl") if r["split"] == "validation"]
    tasks: dict[str, Any] = {}
    for task in TASKS:
        files = task_files(task, settings.work, settings.pacs)
        _, target = photo_features(task, settings.work, settings.pacs, settings.cache, "efficientnet_lite0")
        all_labels = files.target.labels.numpy()
        classes = files.target.classes
        runs: dict[str, list[dict[str, Any]]] = {}
        for change in CHANGES:
            variant = f"{SWEEP_WEIGHTS}+{change}"
            for line in sorted((r for r in sweep if r["task"] == task and r["variant"] == variant), key=seed_of):
                train = settings.split(task, line["seed"]).train
                found = probe_run(
                    settings.run_dir(line["key"]) / "checkpoint.pt",
                    target[torch.from_numpy(train)],
                    all_labels[train],
                    len(classes),
                )
                runs.setdefault(change, []).append({"seed": line["seed"], "validation": line["map_all"], **found})
        true_share = np.bincount(all_labels, minlength=len(classes)) / len(all_labels)
        tasks[task] = {"classes": classes, "true_share": true_share.tolist(), "runs": runs}
    command = "python -m scripts.probe_mix " + " ".join(f"--{k} {v}" for k, v in vars(args).items())
    return {"command": command, "machine": machine(), "tasks": tasks}


def seed_of(line: dict[str, Any]) -> int:
    return int(line["seed"])


def _cells(values: list[float]) -> str:
    return " | ".join(f"{v:.2f}" for v in values)


def report(results: dict[str, Any]) -> str:
    lines = [
        "# What the diversity term's aim does to the unlabelled images' classes",
        "",
        f"{generated_by(results)} Each run of the seed-stability sweep (`results.md` here, split protocol 2) "
        "labels its own unlabelled training images with its classifier (plain-view frozen features); their labels "
        "are counted only to describe the outcome. *Share*: the part of the images put in each class (the true "
        "share first); *recall*: the part of each class's images put in it, mean over the seeds. Validation: the "
        "sweep's validation MAP@all of the same runs, mean ± sample std. No test query is read.",
    ]
    for task, found in results["tasks"].items():
        classes = found["classes"]
        lines += ["", f"## {task}", "", f"| aim | seeds | validation MAP@all | accuracy | {' | '.join(classes)} |"]
        lines += [f"|---|---:|---|---:|{'---:|' * len(classes)}"]
        lines.append(f"| true share | | | | {_cells(found['true_share'])} |")
        for change, runs in found["runs"].items():
            validation = [r["validation"] for r in runs]
            spread = f"{statistics.fmean(validation):.4f} ± {statistics.stdev(validation):.4f}"
            accuracy = statistics.fmean(r["accuracy"] for r in runs)
            shares = np.mean([r["predicted_share"] for r in runs], axis=0).tolist()
            recall = np.mean([r["recall"] for r in runs], axis=0).tolist()
            lead = f"| {CHANGES[change]}: share | {len(runs)} | {spread} | {accuracy:.3f} |"
            lines += [f"{lead} {_cells(shares)} |", f"| … recall | | | | {_cells(recall)} |"]
        lines += ["", "Seed by seed (validation MAP@all; recall of each class):", ""]
        for change, runs in found["runs"].items():
            for run in runs:
                lines.append(
                    f"- {CHANGES[change]}, seed {run['seed']}: {run['validation']:.3f}; recall {_cells(run['recall'])}"
                )
    return "\n".join(lines) + "\n"


def probe_parser(description: str) -> argparse.ArgumentParser:
    """The options of a probe of the seed-stability sweep's runs: data, work folder, feature cache, the sweep's
    raw lines; each probe adds its own after them."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pacs", type=Path, default=Path("../shared/data/pacs"))
    parser.add_argument("--work", type=Path, default=Path("var/bench-split2"))
    parser.add_argument("--cache", type=Path, default=Path("var/feature-cache"))
    parser.add_argument("--sweep", type=Path, default=Path("benchmarks/retrieval-knobs-split2"))
    return parser


def parse_probe_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser``'s arguments, with the data, work and cache folders made absolute."""
    args = parser.parse_args(argv)
    for name in ("pacs", "work", "cache"):
        setattr(args, name, getattr(args, name).resolve())
    return args


def main(argv: Sequence[str] | None = None) -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/retrieval-knobs-split2/mix"))
    args = parse_probe_args(parser, argv)
    results = collect(args)
    write_results(args.out, results, report(results))


if __name__ == "__main__":
    main()
