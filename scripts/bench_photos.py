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
import shutil
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
from model.metrics import RADIUS_METRICS_NOTE, RetrievalMetrics, evaluate_retrieval
from model.objective import LossWeights
from model.train import train
from scripts.bench_stats import cosine_map, describe_run, mean_std, paired_difference

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
        "ref-a1-e0.1": LossWeights(pairwise=10.0, quantization=0.8, adversarial=1.0, classification=1.0, entropy=0.1),
        "ref-a1-e0.1-d0.1": LossWeights(
            pairwise=10.0, quantization=0.8, adversarial=1.0, classification=1.0, entropy=0.1, diversity=0.1
        ),
        "ref-a3-e0.1-d0.1": LossWeights(
            pairwise=10.0, quantization=0.8, adversarial=3.0, classification=1.0, entropy=0.1, diversity=0.1
        ),
        "ref-a1-e0.1-d0.3": LossWeights(
            pairwise=10.0, quantization=0.8, adversarial=1.0, classification=1.0, entropy=0.1, diversity=0.3
        ),
        "ref-a3-e0.1-d0.3": LossWeights(
            pairwise=10.0, quantization=0.8, adversarial=3.0, classification=1.0, entropy=0.1, diversity=0.3
        ),
        "ref-a3-e0.3-d0.3": LossWeights(
            pairwise=10.0, quantization=0.8, adversarial=3.0, classification=1.0, entropy=0.3, diversity=0.3
        ),
        "ref-a3-e0.1-d1": LossWeights(
            pairwise=10.0, quantization=0.8, adversarial=3.0, classification=1.0, entropy=0.1, diversity=1.0
        ),
        "ref-a2-e0.1-d0.3": LossWeights(
            pairwise=10.0, quantization=0.8, adversarial=2.0, classification=1.0, entropy=0.1, diversity=0.3
        ),
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
    views: int,
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
        feature_views=views,
    )
    run_dir = args.work / "runs" / task / method / f"{bits}b" / variant / f"views{views}" / f"seed{seed}"
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


def chosen_variants(runs: Iterable[dict[str, Any]], bits: int) -> dict[str, tuple[str, int]]:
    """Per method, the (variant, views) with the best mean validation MAP@all over every task and seed at ``bits``.

    One default per method for all tasks (not per task): the product ships one default. Only settings run on
    every task and seed count (a partial sweep cannot win on a lucky subset).
    """
    scores: dict[tuple[str, str, int], list[float]] = {}
    for run in runs:
        if run["split"] == "validation" and run["bits"] == bits:
            scores.setdefault((run["method"], run["variant"], run["feature_views"]), []).append(run["map_all"])
    complete = max((len(values) for values in scores.values()), default=0)
    best: dict[str, tuple[float, str, int]] = {}
    for (method, variant, views), values in scores.items():
        if variant not in GRID[method] or len(values) < complete:
            continue  # a variant of an earlier grid (kept in the raw file), or not run everywhere
        mean = statistics.fmean(values)
        if method not in best or mean > best[method][0]:
            best[method] = (mean, variant, views)
    return {method: (variant, views) for method, (_, variant, views) in best.items()}


def summarise(out: Path) -> str:
    """The markdown report: chosen variants, the test table with sample stds, paired comparisons, references."""
    tuning, runs = read_runs(out / "tuning.jsonl"), read_runs(out / "runs.jsonl")
    cosine = read_runs(out / "cosine.jsonl")
    lines = [
        "# PACS photo retrieval (frozen EfficientNet-Lite0 features)",
        "",
        "Generated by `python -m scripts.bench_photos --stage report` from `tuning.jsonl`, `runs.jsonl` and "
        "`cosine.jsonl` (raw, one JSON line per run and query split, each with its commit, command, machine and "
        "date). Photo is the labelled source and the database; the target domain is split per seed into 10 % "
        "validation queries, 10 % test queries and 80 % unlabelled training images. Choices were made on the "
        "validation queries only; every number below is on the **test** queries. Mean ± sample std (n − 1) over "
        "seeds. About a quarter of the PACS photos (434 of 1,670) come from ImageNet, which the backbone was "
        "trained on. PACS: Li et al., *Deeper, Broader and Artier Domain Generalization*, ICCV 2017.",
        "",
    ]
    if tuning:
        lines += ["## Tuning (validation MAP@all, 64 bits, mean over tasks and seeds)", ""]
        lines += ["| method | variant | views | validation MAP@all | runs |", "|---|---|---:|---:|---:|"]
        groups: dict[tuple[str, str, int], list[float]] = {}
        for run in tuning:
            if run["split"] == "validation":
                groups.setdefault((run["method"], run["variant"], run["feature_views"]), []).append(run["map_all"])
        for (method, variant, views), values in sorted(groups.items()):
            lines.append(f"| {method} | {variant} | {views} | {statistics.fmean(values):.4f} | {len(values)} |")
        lines.append("")
    tests = [run for run in runs if run["split"] == "test"]
    if tests:
        lines += ["## Test queries", ""]
        header = (
            "| task | bits | method | variant | views | MAP@all | MAP@r≤2 | P@r≤2 | MAP@all, target database | seeds |"
        )
        lines += [header, "|---|---:|---|---|---:|---|---|---|---|---:|"]
        chosen = chosen_variants(tuning, 64)
        cells: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        for run in tests:
            if (run["variant"], run["feature_views"]) == chosen.get(run["method"]):
                cells.setdefault((run["task"], run["bits"], run["method"]), []).append(run)
        for (task, bits, method), members in sorted(
            cells.items(), key=lambda kv: (kv[0][0], kv[0][1], METHODS.index(kv[0][2]))
        ):
            members.sort(key=lambda r: r["seed"])
            shown = [_fmt(mean_std([m[key] for m in members])) for key in METRICS]
            target_db = _fmt(mean_std([m["target_vs_target"]["map_all"] for m in members]))
            lines.append(
                f"| {task} | {bits} | {method} | {members[0]['variant']} | {members[0]['feature_views']} "
                f"| {' | '.join(shown)} | {target_db} "
                f"| {len(members)} |"
            )
        lines += ["", RADIUS_METRICS_NOTE]
        lines += ["", "## Paired comparisons (test MAP@all, same seeds and splits; 95 % t interval)", ""]
        lines += ["| task | bits | comparison | mean difference | 95 % CI | holds |", "|---|---:|---|---:|---|---|"]
        for (task, bits, method), members in sorted(cells.items()):
            if method != "metah":
                continue
            mine = {m["seed"]: m["map_all"] for m in members}
            for rival in ("tah", "source_only"):
                theirs = {m["seed"]: m["map_all"] for m in cells.get((task, bits, rival), [])}
                seeds = sorted(set(mine) & set(theirs))
                if len(seeds) < 2:
                    continue
                diff = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
                lines.append(
                    f"| {task} | {bits} | metah − {rival} | {diff['mean']:+.4f} | [{diff['low']:+.4f}, "
                    f"{diff['high']:+.4f}] | {'yes' if diff['holds'] else 'no'} |"
                )
        checks = [run["artefact_check"]["codes_equal"] for run in tests]
        lines += [
            "",
            f"Artefact check: in every run, {tests[0]['artefact_check']['images']} test images were encoded by the "
            f"exported `model.pt`; the share of codes identical to the feature path's ranged "
            f"{min(checks):.3f}–{max(checks):.3f}.",
        ]
    if cosine:
        lines += ["", "## No hashing: cosine similarity of the frozen features (test MAP@all)", ""]
        lines += ["| task | MAP@all | seeds |", "|---|---|---:|"]
        for task in TASKS:
            values = [c["test"] for c in cosine if c["task"] == task]
            if values:
                lines.append(f"| {task} | {_fmt(mean_std(values))} | {len(values)} |")
    return "\n".join(lines) + "\n"


def _fmt(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.4f} ± {pair[1]:.4f}"


def time_frozen_runs(args: argparse.Namespace) -> None:
    """Wall time of one default frozen run on photo → sketch (seed 0 split), first with an empty feature cache,
    then again with the cache it filled; one JSON line each in ``OUT/timing.jsonl``."""
    target = list_labelled_folder(args.pacs / "sketch", what="target")
    split = split_target("photo-sketch", target, 0, args.work)
    cache = args.work / "timing-cache"
    if cache.exists():
        shutil.rmtree(cache)
    for attempt in ("cold", "warm"):
        config = TrainConfig(seed=0, feature_cache=str(cache))
        started = time.perf_counter()
        result = train(
            config, args.pacs / "photo", split.train_dir, args.work / "timing" / attempt, show_progress=False
        )
        line = {
            "task": "photo-sketch",
            "cache": attempt,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "train_seconds": result.metrics["train_seconds"],
            "backbone": result.metrics["backbone"],
            "mode": result.metrics["mode"],
            "feature_views": config.feature_views,
            "source_images": result.metrics["source_images"],
            "target_images": result.metrics["target_images"],
            "torch_threads": torch.get_num_threads(),
            **describe_run(),
        }
        with (args.out / "timing.jsonl").open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pacs", type=Path, default=Path("../shared/data/pacs"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/photos"))
    parser.add_argument("--work", type=Path, default=Path("var/bench-photos"))
    parser.add_argument("--cache", type=Path, default=Path("var/feature-cache"))
    parser.add_argument("--stage", choices=["tune", "table", "report", "time"], required=True)
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
    if args.stage == "time":
        time_frozen_runs(args)
        return
    if args.stage == "report":
        (args.out / "results.md").write_text(summarise(args.out))
        print((args.out / "results.md").read_text())
        return
    runs_path = args.out / ("tuning.jsonl" if args.stage == "tune" else "runs.jsonl")
    done = load_done(runs_path)
    bits_list = args.bits or ([64] if args.stage == "tune" else [32, 64])
    seeds = args.seeds or [0, 1, 2]
    tuned: dict[str, list[dict[str, Any]]] = {}
    if args.stage == "table":
        for record in read_runs(args.out / "tuning.jsonl"):
            tuned.setdefault(record["key"], []).append(record)
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
                    settings = [(v, args.views) for v in GRID[method]] if args.stage == "tune" else [chosen[method]]
                    for variant, views in settings:
                        if args.variants and variant not in args.variants:
                            continue
                        key = run_key(task, method, bits, seed, variant, views)
                        if key in done:
                            continue
                        # a table run that the tuning already made (same key: same data, seed and settings)
                        # is copied, not repeated: its test split was never looked at while choosing
                        records = tuned.get(key) or one_run(task, method, bits, seed, variant, views, data, split, args)
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
