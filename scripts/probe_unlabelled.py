"""Can the unlabelled images alone fix the sketches' seed-to-seed spread? Three probes of the frozen default's runs.

The sketch runs spread widely (± 0.081 over 20 test seeds) because the diversity term pulls the target's predicted
class mix toward equal shares while the sketches are 2 % houses and 4 % persons (``scripts.probe_mix``); the true
mix halves the spread. Three ways to do without labels, each scored here before any is built into training:

1. **Estimate the mix** from the unlabelled images: the share of each class among the target's nearest source
   class centroid (frozen features, each domain's mean removed), after k-means from those centroids, and after
   k-means in each trained run's code space (seeded by its classifier, ``model.clusters.centroid_labels``); next to
   the run's own classifier and equal shares. Scored by the L1 distance to the true shares of the run's unlabelled
   training images (their labels count only to score).
2. **Average several seeds' classifiers**: accuracy on the shared validation queries of split protocol 2 of each
   run alone against the mean of its probabilities with other seeds' (every pair, triple and all six).
3. **Pick one seed by an unsupervised score**: the Spearman rank correlation, over the benchmark's 20 seeds of the
   default, between the validation MAP@all and each run's mean prediction entropy on its unlabelled images, the
   information-maximisation score (entropy of the mean prediction minus the mean entropy) and the share of
   unlabelled images whose five nearest unlabelled images (frozen features) get the same class.

Reads the checkpoints of the seed-stability sweep (``benchmarks/retrieval-knobs-split2``, seeds 0 … 5) and of the
benchmark's table (``benchmarks/retrieval-split2``, validation lines only) in ``--work``. No test query is read.

    .venv/bin/python -m scripts.probe_unlabelled --pacs ../shared/data/pacs --work var/bench-split2 \\
        --out benchmarks/retrieval-knobs-split2/unlabelled

Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.clusters import centroid_labels, nearest_rows
from model.network import Heads
from scripts.bench import Settings, photo_features, read_lines, task_files
from scripts.bench_knobs import FROZEN_DEFAULT, SWEEP_WEIGHTS
from scripts.probe_mix import classify, parse_probe_args, probe_parser, restore_heads, seed_of, sweep_settings
from workbench.machine import machine
from workbench.output import generated_by, write_results

TASKS = ("photo-cartoon", "photo-sketch")
SWEEP_DEFAULT = f"{SWEEP_WEIGHTS}+{FROZEN_DEFAULT},neighbours=0.3,diversity=1"
TABLE_DEFAULT = "p10-q0.8-a3-c1-e0.3-d1-n0.3-cdan"  # the frozen MeTAH default of 2026-12-05 morning, probed
ESTIMATES = {
    "equal": "equal shares (the default's aim)",
    "classifier": "the run's classifier (argmax)",
    "features": "nearest source class centroid, frozen features (each domain centred)",
    "features_kmeans": "k-means from those centroids, frozen features (each domain centred)",
    "codes_kmeans": "k-means in the run's code space, seeded by its classifier",
}
SCORES = {
    "entropy": "mean prediction entropy",
    "information": "information maximisation (entropy of the mean − mean entropy)",
    "agreement": "five nearest unlabelled images in the same class",
}


def shares(labels: np.ndarray, classes: int) -> np.ndarray:
    """The part of ``labels`` in each of ``classes`` classes."""
    return np.bincount(labels, minlength=classes) / len(labels)


def kmeans_from(points: torch.Tensor, centroids: torch.Tensor, rounds: int = 20) -> torch.Tensor:
    """Spherical k-means of ``points`` ``[N, D]`` started at ``centroids`` ``[C, D]``; the labels, int64 ``[N]``.
    A centroid that no point chose stays where it was."""
    points = F.normalize(points.float(), dim=1)
    centroids = F.normalize(centroids.float(), dim=1)
    labels = (points @ centroids.T).argmax(dim=1)
    for _ in range(rounds):
        for c in range(centroids.shape[0]):
            chosen = labels == c
            if chosen.any():
                centroids[c] = F.normalize(points[chosen].mean(dim=0), dim=0)
        labels = (points @ centroids.T).argmax(dim=1)
    return labels


def feature_labels(
    source: torch.Tensor, source_labels: np.ndarray, target: torch.Tensor, classes: int
) -> dict[str, np.ndarray]:
    """Target labels from the frozen features alone: nearest source class centroid and k-means from there, each
    domain's mean removed first (the domain shift moves the whole cloud)."""
    source = source.float() - source.float().mean(dim=0)
    target = target.float() - target.float().mean(dim=0)
    labels = torch.from_numpy(source_labels)
    centroids = torch.stack([F.normalize(source[labels == c], dim=1).mean(dim=0) for c in range(classes)])
    nearest = (F.normalize(target, dim=1) @ F.normalize(centroids, dim=1).T).argmax(dim=1)
    return {"features": nearest.numpy(), "features_kmeans": kmeans_from(target, centroids).numpy()}


def unsupervised_scores(probabilities: torch.Tensor, neighbours: torch.Tensor) -> dict[str, float]:
    """The selection scores of one run from its classifier's probabilities ``[N, C]`` on its unlabelled images and
    each image's nearest unlabelled images ``[N, k]``."""
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1).mean()
    mean = probabilities.mean(dim=0)
    predicted = probabilities.argmax(dim=1)
    return {
        "entropy": float(entropy),
        "information": float(-(mean * mean.clamp_min(1e-12).log()).sum() - entropy),
        "agreement": float((predicted[neighbours] == predicted[:, None]).float().mean()),
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties broken by position: the scores here are continuous)."""
    ranks_a, ranks_b = (np.argsort(np.argsort(np.asarray(x))) for x in (a, b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def ensemble_accuracy(probabilities: dict[int, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Accuracy of each run alone and of every group of 2, 3 and all runs averaging their probabilities (means)."""
    seeds = sorted(probabilities)
    alone = {s: float((probabilities[s].argmax(axis=1) == labels).mean()) for s in seeds}
    found = {"alone": statistics.fmean(alone.values())}
    for size in (2, 3, len(seeds)):
        groups = list(itertools.combinations(seeds, size))
        found[f"averaged {size}"] = statistics.fmean(
            float((np.mean([probabilities[s] for s in group], axis=0).argmax(axis=1) == labels).mean())
            for group in groups
        )
    return found


def _classifier(heads: Heads, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's codes (relaxed) and class probabilities for ``features``."""
    codes, logits = classify(heads, features)
    return codes, F.softmax(logits, dim=1)


def _task(task: str, args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    files = task_files(task, settings.work, settings.pacs)
    source, target = photo_features(task, settings.work, settings.pacs, settings.cache, "efficientnet_lite0")
    labels = files.target.labels.numpy()
    classes = len(files.target.classes)
    sweep = [r for r in read_lines(args.sweep / "runs.jsonl") if r["split"] == "validation"]
    sweep = sorted((r for r in sweep if r["task"] == task and r["variant"] == SWEEP_DEFAULT), key=seed_of)
    estimates: dict[str, list[float]] = {name: [] for name in ESTIMATES}
    validation_probabilities: dict[int, np.ndarray] = {}
    shared = settings.split(task, sweep[0]["seed"]).validation  # protocol 2: one validation tenth for every seed
    for line in sweep:
        split = settings.split(task, line["seed"])
        assert np.array_equal(split.validation, shared)
        train = torch.from_numpy(split.train)
        true = shares(labels[split.train], classes)
        heads = restore_heads(settings.run_dir(line["key"]) / "checkpoint.pt")
        codes, probabilities = _classifier(heads, target[train])
        found = feature_labels(source, files.source.labels.numpy(), target[train], classes)
        found["classifier"] = probabilities.argmax(dim=1).numpy()
        found["codes_kmeans"] = centroid_labels(codes, probabilities.log(), rounds=20).numpy()
        for name in ESTIMATES:
            estimate = np.full(classes, 1 / classes) if name == "equal" else shares(found[name], classes)
            estimates[name].append(float(np.abs(estimate - true).sum()))
        validation_probabilities[line["seed"]] = _classifier(heads, target[torch.from_numpy(shared)])[1].numpy()
    ensembles = ensemble_accuracy(validation_probabilities, labels[shared])
    table = [r for r in read_lines(args.table / "runs.jsonl") if r["split"] == "validation"]
    table = sorted(
        (r for r in table if r["task"] == task and r["variant"] == TABLE_DEFAULT and r["bits"] == 64), key=seed_of
    )
    runs = []
    for line in table:
        train = torch.from_numpy(settings.split(task, line["seed"]).train)
        _, probabilities = _classifier(restore_heads(settings.run_dir(line["key"]) / "checkpoint.pt"), target[train])
        scores = unsupervised_scores(probabilities, nearest_rows(target[train], 5))
        runs.append({"seed": line["seed"], "validation": line["map_all"], **scores})
    correlations = {name: spearman([r["validation"] for r in runs], [r[name] for r in runs]) for name in SCORES}
    return {
        "seeds": [line["seed"] for line in sweep],
        "l1": estimates,
        "ensembles": ensembles,
        "selection_runs": runs,
        "spearman": correlations,
    }


def collect(args: argparse.Namespace) -> dict[str, Any]:
    settings = sweep_settings(args)
    tasks = {task: _task(task, args, settings) for task in TASKS}
    command = "python -m scripts.probe_unlabelled " + " ".join(f"--{k} {v}" for k, v in vars(args).items())
    return {"command": command, "machine": machine(), "tasks": tasks}


def _spread(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(results: dict[str, Any]) -> str:
    tasks = results["tasks"]
    names = list(tasks)
    lines = [
        "# What the unlabelled images alone can tell: class-mix estimates, averaged seeds, unsupervised selection",
        "",
        f"{generated_by(results)} See the script's docstring for each probe. Mean ± sample std over the runs. "
        "Labels count only to score; no test query is read.",
        "",
        "## 1. The target's class mix, estimated",
        "",
        "L1 distance between each estimate and the true shares of the run's unlabelled training images (0: exact, "
        "2: disjoint), the seed-stability sweep's default runs; in brackets, the runs where the estimate is closer "
        "than equal shares.",
        "",
        f"| estimate | {' | '.join(names)} |",
        f"|---|{'---|' * len(names)}",
    ]
    for name, label in ESTIMATES.items():
        cells = []
        for task in names:
            found, equal = tasks[task]["l1"][name], tasks[task]["l1"]["equal"]
            wins = sum(e < q for e, q in zip(found, equal, strict=True))
            cells.append(_spread(found) + ("" if name == "equal" else f" ({wins} of {len(found)})"))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += [
        "",
        "## 2. Several seeds' classifiers averaged",
        "",
        "Accuracy on the shared validation queries: each run alone (mean) and the mean over every group of 2, 3 and "
        "all of the sweep's runs averaging their class probabilities.",
        "",
        f"| classifiers | {' | '.join(names)} |",
        f"|---|{'---:|' * len(names)}",
    ]
    for group in tasks[names[0]]["ensembles"]:
        cells = [f"{tasks[t]['ensembles'][group]:.3f}" for t in names]
        lines.append(f"| {group} | {' | '.join(cells)} |")
    lines += [
        "",
        "## 3. An unsupervised score to pick a seed by",
        "",
        "Spearman rank correlation between each score (on the run's unlabelled training images) and the run's "
        "validation MAP@all, over the benchmark table's seeds of the frozen default (64 bits). A score to pick by "
        "would need the same sign, and a large size, on both tasks.",
        "",
        "| score | " + " | ".join(f"{t} ({len(tasks[t]['selection_runs'])} seeds)" for t in names) + " |",
        f"|---|{'---:|' * len(names)}",
    ]
    for name, label in SCORES.items():
        cells = [f"{tasks[t]['spearman'][name]:+.2f}" for t in names]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--table", type=Path, default=Path("benchmarks/retrieval-split2"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/retrieval-knobs-split2/unlabelled"))
    args = parse_probe_args(parser, argv)
    results = collect(args)
    write_results(args.out, results, report(results))


if __name__ == "__main__":
    main()
