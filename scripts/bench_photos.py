"""Cross-domain photo retrieval benchmark on PACS: photo → sketch and photo → cartoon, frozen EfficientNet features.

Protocol. Photo is the labelled source domain: the training set and the database. The other domain is the target:
each seed splits it into 10 % **validation** queries, 10 % **test** queries and 80 % unlabelled training images.
Every run is scored on both query sets; choices (the grid below) are made on validation MAP@all only, and the
table reports the test queries. Two protocols: target queries vs the photo database, and target queries vs the
unlabelled target training images (their labels used only for scoring).

Codes are computed the way the exported artefact computes them — the frozen backbone's features of the plain
image, the hash projection, the sign — from the feature cache, so a run costs seconds; every run also encodes
``--artefact-check`` test images with the exported ``model.pt`` itself and records how many codes agree exactly.

Raw results are JSON lines (one per run and split) in ``OUT/runs.jsonl`` with ``task``, ``method``, ``bits``,
``seed``, ``split``, ``variant``, ``map_all`` …, ``commit``; an interrupted benchmark resumes where it stopped.

    .venv/bin/python -m scripts.bench_photos --pacs ../shared/data/pacs --out benchmarks/photos --stage tune
    .venv/bin/python -m scripts.bench_photos --pacs ../shared/data/pacs --out benchmarks/photos --stage table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.backbones import build_backbone
from model.config import TrainConfig
from model.data import FileSet, list_labelled_folder
from model.evaluate import encode_files, shared_label_ids
from model.export import load_encoder
from model.factory import restore_network
from model.features import FeatureCache, FeatureTable, extract_features
from model.metrics import RetrievalMetrics, evaluate_retrieval
from model.objective import LossWeights
from model.train import train
from scripts.bench_stats import cosine_map, describe_run

TASKS = {"photo-sketch": ("photo", "sketch"), "photo-cartoon": ("photo", "cartoon")}
METHODS = ("source_only", "tah", "metah")
METRICS = ("map_all", "map_radius2", "precision_radius2")
BACKBONE = "efficientnet_lite0"

# The tuning grid: the same budget for every method (a few points each), chosen by validation MAP@all.
# "reference" weights are TAH's own (pairwise 10, quantisation 0.8, adversarial 1).
GRID: dict[str, dict[str, LossWeights]] = {
    "source_only": {
        "p1-q0.1": LossWeights(pairwise=1.0, quantization=0.1),
        "p10-q0.8": LossWeights(pairwise=10.0, quantization=0.8),
        "p10-q0.1": LossWeights(pairwise=10.0, quantization=0.1),
    },
    "tah": {
        "reference": LossWeights(pairwise=10.0, quantization=0.8, adversarial=1.0),
        "p10-q0.8-a0.3": LossWeights(pairwise=10.0, quantization=0.8, adversarial=0.3),
        "p10-q0.8-a3": LossWeights(pairwise=10.0, quantization=0.8, adversarial=3.0),
    },
    "metah": {
        "ref-c1-e0.1": LossWeights(pairwise=10.0, quantization=0.8, adversarial=1.0, classification=1.0, entropy=0.1),
        "ref-c1-e0.3": LossWeights(pairwise=10.0, quantization=0.8, adversarial=1.0, classification=1.0, entropy=0.3),
        "ref-c3-e0.3": LossWeights(pairwise=10.0, quantization=0.8, adversarial=1.0, classification=3.0, entropy=0.3),
    },
}


@dataclass(frozen=True)
class TaskData:
    """One task's listed files, their cached plain features, and the seed's split of the target."""

    source: FileSet
    target: FileSet
    source_features: torch.Tensor  # float32 [S, D], view 0
    target_features: torch.Tensor  # float32 [T, D], view 0


@dataclass(frozen=True)
class Split:
    validation: np.ndarray
    test: np.ndarray
    train: np.ndarray
    train_dir: Path


def split_target(task: str, target: FileSet, seed: int, work: Path) -> Split:
    """Seeded 10 / 10 / 80 split of the target; the 80 % become a flat folder of symlinks (unlabelled)."""
    order = np.random.default_rng(seed).permutation(len(target))
    tenth = round(len(target) * 0.1)
    validation, test, rest = np.sort(order[:tenth]), np.sort(order[tenth : 2 * tenth]), np.sort(order[2 * tenth :])
    train_dir = work / "splits" / task / f"seed{seed}" / "target_train"
    if not (train_dir / ".complete").exists():
        train_dir.mkdir(parents=True, exist_ok=True)
        for index in rest:
            path = target.paths[index]
            link = train_dir / f"{path.parent.name}_{path.name}"
            if not link.exists():
                link.symlink_to(path.resolve())
        (train_dir / ".complete").touch()
    return Split(validation, test, rest, train_dir)


def load_task(task: str, pacs: Path, cache_root: Path) -> TaskData:
    source_name, target_name = TASKS[task]
    source = list_labelled_folder(pacs / source_name, what="source")
    target = list_labelled_folder(pacs / target_name, what="target")
    backbone = build_backbone(BACKBONE)
    cache = FeatureCache(cache_root, BACKBONE, backbone)
    tables = []
    for files in (source, target):
        keys, skipped = extract_features(files, backbone, cache, 1, device=torch.device("cpu"), workers=1)
        if skipped:
            raise RuntimeError(f"{len(skipped)} PACS file(s) did not decode: {skipped[:3]}")
        tables.append(torch.cat(list(FeatureTable(cache, keys, 1, 2**31).plain())))
    return TaskData(source, target, tables[0], tables[1])


def _signs(projection: torch.nn.Module, features: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        z = projection(features)
    return torch.where(z > 0, 1.0, -1.0).numpy()


def _metrics(result: RetrievalMetrics) -> dict[str, float]:
    return {key: float(getattr(result, key)) for key in METRICS}


def score_run(run_dir: Path, data: TaskData, split: Split, check_images: int) -> dict[str, Any]:
    """Metrics of a finished run on both query sets and both protocols, plus the artefact agreement check."""
    restored = restore_network(run_dir / "checkpoint.pt")  # the exported weights (the average)
    projection = restored.net.heads.hash.projection().eval()
    source_codes = _signs(projection, data.source_features)
    target_codes = _signs(projection, data.target_features)
    target_labels, source_labels = shared_label_ids(data.target, data.source)
    scores: dict[str, Any] = {}
    for split_name in ("validation", "test"):
        queries = getattr(split, split_name)
        scores[split_name] = {
            "target_vs_source": _metrics(
                evaluate_retrieval(target_codes[queries], target_labels[queries], source_codes, source_labels)
            ),
            "target_vs_target": _metrics(
                evaluate_retrieval(
                    target_codes[queries],
                    target_labels[queries],
                    target_codes[split.train],
                    target_labels[split.train],
                )
            ),
        }
    sample = split.test[:check_images]
    loaded = load_encoder(run_dir / "model.pt")
    artefact = encode_files(loaded.module, data.target.take(sample), loaded.input_size)
    scores["artefact_check"] = {
        "images": len(sample),
        "codes_equal": float(np.mean(np.all(artefact == target_codes[sample], axis=1))),
        "bits_equal": float(np.mean(artefact == target_codes[sample])),
    }
    return scores


def run_key(task: str, method: str, bits: int, seed: int, variant: str, views: int) -> str:
    return f"{task}/{method}/{bits}/{seed}/{variant}/views{views}"


def load_done(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def one_run(
    task: str,
    method: str,
    bits: int,
    seed: int,
    variant: str,
    data: TaskData,
    split: Split,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    weights = GRID[method].get(variant)
    config = TrainConfig(
        method=method,
        bits=bits,
        seed=seed,
        backbone=BACKBONE,
        mode="frozen",
        iterations=args.iterations,
        feature_cache=str(args.cache),
        loss_weights=weights,
        eval_queries=200,
        loader_workers=1,
        feature_views=args.views,
    )
    run_dir = args.work / "runs" / task / method / f"{bits}b" / variant / f"views{args.views}" / f"seed{seed}"
    source_dir = args.pacs / TASKS[task][0]
    started = time.perf_counter()
    result = train(config, source_dir, split.train_dir, run_dir, show_progress=False)
    seconds = time.perf_counter() - started
    scores = score_run(run_dir, data, split, args.artefact_check)
    common = {
        "key": run_key(task, method, bits, seed, variant, config.feature_views),
        "task": task,
        "method": method,
        "bits": bits,
        "seed": seed,
        "variant": variant,
        "loss_weights": result.metrics.get("final_losses") and config.weights.to_dict(),
        "iterations": config.iterations,
        "feature_views": config.feature_views,
        "train_seconds": round(seconds, 2),
        "artefact_check": scores["artefact_check"],
        **describe_run(),
    }
    records = []
    for split_name in ("validation", "test"):
        record = {**common, "split": split_name}
        for protocol, values in scores[split_name].items():
            record[protocol] = values
        record.update(scores[split_name]["target_vs_source"])  # the headline protocol at the top level
        records.append(record)
    return records


def cosine_reference(data: TaskData, split: Split) -> dict[str, float]:
    """The no-hashing line: cosine similarity of the frozen backbone's features, target test queries vs photos."""
    target_labels, source_labels = shared_label_ids(data.target, data.source)
    return {
        name: cosine_map(
            data.target_features[getattr(split, name)],
            target_labels[getattr(split, name)],
            data.source_features,
            source_labels,
        )
        for name in ("validation", "test")
    }


def read_runs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def chosen_variants(runs: Iterable[dict[str, Any]], bits: int) -> dict[str, str]:
    """Per method, the variant with the best mean validation MAP@all over every task and seed at ``bits``.

    One default per method for all tasks (not per task): the product ships one default.
    """
    scores: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        if run["split"] == "validation" and run["bits"] == bits:
            scores.setdefault((run["method"], run["variant"]), []).append(run["map_all"])
    best: dict[str, tuple[float, str]] = {}
    for (method, variant), values in scores.items():
        mean = statistics.fmean(values)
        if method not in best or mean > best[method][0]:
            best[method] = (mean, variant)
    return {method: variant for method, (_, variant) in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pacs", type=Path, default=Path("../shared/data/pacs"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/photos"))
    parser.add_argument("--work", type=Path, default=Path("var/bench-photos"))
    parser.add_argument("--cache", type=Path, default=Path("var/feature-cache"))
    parser.add_argument("--stage", choices=["tune", "table"], required=True)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--bits", nargs="+", type=int, default=None, help="tune: 64; table: 32 64")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="tune: 0 1 2; table: 0 1 2")
    parser.add_argument("--variants", nargs="+", default=None, help="tune: only these grid variants")
    parser.add_argument("--iterations", type=int, default=TrainConfig.iterations)
    parser.add_argument("--views", type=int, default=TrainConfig.feature_views, help="cached views per image")
    parser.add_argument("--artefact-check", type=int, default=32, help="test images encoded by model.pt per run")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("METAH_BENCH_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / ("tuning.jsonl" if args.stage == "tune" else "runs.jsonl")
    done = load_done(runs_path)
    bits_list = args.bits or ([64] if args.stage == "tune" else [32, 64])
    seeds = args.seeds or [0, 1, 2]
    if args.stage == "table":
        chosen = chosen_variants(read_runs(args.out / "tuning.jsonl"), 64)
        print(f"variants chosen on validation: {chosen}", flush=True)
    for task in args.tasks:
        data = load_task(task, args.pacs, args.cache)
        for seed in seeds:
            split = split_target(task, data.target, seed, args.work)
            reference_path = args.out / "cosine.jsonl"
            reference_key = f"{task}/{seed}"
            if reference_key not in load_done(reference_path):
                line = {
                    "key": reference_key,
                    "task": task,
                    "seed": seed,
                    **cosine_reference(data, split),
                    **describe_run(),
                }
                with reference_path.open("a") as fh:
                    fh.write(json.dumps(line) + "\n")
            for bits in bits_list:
                for method in args.methods:
                    variants = list(GRID[method]) if args.stage == "tune" else [chosen[method]]
                    for variant in variants:
                        if args.variants and variant not in args.variants:
                            continue
                        if run_key(task, method, bits, seed, variant, args.views) in done:
                            continue
                        records = one_run(task, method, bits, seed, variant, data, split, args)
                        with runs_path.open("a") as fh:
                            for record in records:
                                fh.write(json.dumps(record) + "\n")
                        val, test = records
                        print(
                            f"{records[0]['key']}: validation {val['map_all']:.4f} test {test['map_all']:.4f} "
                            f"({val['train_seconds']:.0f}s, artefact codes equal "
                            f"{val['artefact_check']['codes_equal']:.3f})",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
