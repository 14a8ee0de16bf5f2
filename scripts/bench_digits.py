"""Cross-domain digit retrieval benchmark: MNIST→USPS and USPS→MNIST × bits × methods × seeds.

Protocol (issue 2): the whole source set is the labelled training set and the database; the target set is
split with the run's seed into 10 % labelled queries and 90 % unlabelled training images. Every number is
measured from the exported artefact (``model.pt``) loaded back from disk, on two protocols:
``target_vs_source`` (queries vs the source database) and ``target_vs_target`` (queries vs the 90 % target
images, TAH's protocol). Runs are appended to ``runs.jsonl`` as they finish, so an interrupted benchmark
resumes where it stopped.

    .venv/bin/python scripts/bench_digits.py --out benchmarks/digits
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from model.config import TrainConfig, load_config_file
from model.data import ImageSet, load_labelled_folder
from model.evaluate import encode_images, score
from model.export import load_encoder
from model.metrics import RADIUS_METRICS_NOTE, PRCurve
from model.plots import plot_pr_curves
from model.train import train
from workbench.datasets import ArrayDomain, load_digits, split_queries, write_image_folder
from workbench.machine import machine

TASKS = {"mnist-usps": ("mnist", "usps"), "usps-mnist": ("usps", "mnist")}
METHODS = ("source_only", "tah", "metah")
PROTOCOLS = ("target_vs_source", "target_vs_target")
METRICS = ("map_all", "map_radius2", "precision_radius2")


@dataclass(frozen=True)
class TaskFolders:
    source: Path
    target_train: Path  # unlabelled
    target_train_labelled: Path  # the same images, labelled, for the target database protocol
    queries: Path


def materialise(task: str, seed: int, work: Path) -> TaskFolders:
    source_name, target_name = TASKS[task]
    source, target = load_digits(source_name), load_digits(target_name)
    query_index, train_index = split_queries(len(target), 0.1, seed)
    base = work / "data" / task
    folders = TaskFolders(
        source=base / "source",
        target_train=base / f"seed{seed}" / "target_train",
        target_train_labelled=base / f"seed{seed}" / "target_train_labelled",
        queries=base / f"seed{seed}" / "queries",
    )
    jobs: list[tuple[ArrayDomain, Path, bool]] = [
        (source, folders.source, True),
        (target.take(train_index), folders.target_train, False),
        (target.take(train_index), folders.target_train_labelled, True),
        (target.take(query_index), folders.queries, True),
    ]
    for domain, path, labelled in jobs:
        done = path / ".complete"
        if not done.exists():
            write_image_folder(domain, path, labelled=labelled)
            done.touch()
    return folders


def run_key(task: str, bits: int, method: str, seed: int) -> str:
    return f"{task}/{bits}/{method}/{seed}"


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {run["key"]: run for run in runs}


def one_run(
    task: str,
    bits: int,
    method: str,
    seed: int,
    folders: TaskFolders,
    eval_sets: dict[str, tuple[ImageSet, ImageSet]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    base = load_config_file(args.config) if args.config else TrainConfig()
    config = base.override(
        method=method,
        bits=bits,
        seed=seed,
        device=args.device,
        eval_queries=args.eval_queries,
        iterations=args.iterations,
    )
    run_dir = args.work / "runs" / task / f"{bits}b" / method / f"seed{seed}"
    started = time.perf_counter()
    result = train(config, folders.source, folders.target_train, run_dir, show_progress=False)
    train_wall = time.perf_counter() - started
    loaded = load_encoder(result.paths.model)  # measure the artefact, not the in-memory network
    record: dict[str, Any] = {
        "key": run_key(task, bits, method, seed),
        "task": task,
        "bits": bits,
        "method": method,
        "seed": seed,
        "model_version": result.model_version,
        "train_seconds": round(train_wall, 2),
        "device": result.metrics["device"],
        "machine": machine(),
    }
    for protocol, (queries, database) in eval_sets.items():
        metrics = score(loaded.module, queries, database)
        record[protocol] = {key: getattr(metrics, key) for key in METRICS}
        record[protocol]["precision_at_k"] = {str(k): v for k, v in metrics.precision_at_k.items()}
        record[protocol]["pr_curve"] = {
            "precision": [None if p != p else float(p) for p in metrics.pr_curve.precision],
            "recall": [float(r) for r in metrics.pr_curve.recall],
        }
    return record


def aggregate(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["bits"], run["method"]), []).append(run)
    rows = []
    for (task, bits, method), members in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], METHODS.index(kv[0][2]))
    ):
        row: dict[str, Any] = {
            "task": task,
            "bits": bits,
            "method": method,
            "seeds": sorted(m["seed"] for m in members),
        }
        for protocol in PROTOCOLS:
            for metric in METRICS:
                values = [m[protocol][metric] for m in members]
                row[f"{protocol}.{metric}.mean"] = statistics.fmean(values)
                row[f"{protocol}.{metric}.std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        row["train_seconds.mean"] = statistics.fmean(m["train_seconds"] for m in members)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], protocol: str) -> str:
    lines = [
        "| task | bits | method | MAP@all | MAP@r≤2 | P@r≤2 | train s |",
        "|---|---:|---|---|---|---|---:|",
    ]
    for row in rows:
        cells = [f"{row[f'{protocol}.{m}.mean']:.4f} ± {row[f'{protocol}.{m}.std']:.4f}" for m in METRICS]
        name = f"**{row['method']}**" if row["method"] == "metah" else row["method"]
        lines.append(
            f"| {row['task']} | {row['bits']} | {name} | {' | '.join(cells)} | {row['train_seconds.mean']:.0f} |"
        )
    return "\n".join([*lines, "", RADIUS_METRICS_NOTE])


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each as a line saying met / missed with the numbers."""
    lines = []
    by_key = {(r["task"], r["bits"], r["method"]): r for r in rows}
    for task in TASKS:
        for bits in sorted({r["bits"] for r in rows}):
            metah = by_key.get((task, bits, "metah"))
            if metah is None:
                continue
            for rival in ("tah", "source_only"):
                other = by_key.get((task, bits, rival))
                if other is None:
                    continue
                key = "target_vs_source.map_all"
                gap = metah[f"{key}.mean"] - other[f"{key}.mean"]
                margin = max(metah[f"{key}.std"], other[f"{key}.std"])
                verdict = "met" if gap > margin else "MISSED"
                lines.append(
                    f"{task} {bits}b: metah − {rival} MAP@all = {gap:+.4f} (largest seed std {margin:.4f}): {verdict}"
                )
        row64 = by_key.get((task, 64, "metah"))
        if row64 is not None:
            value = row64["target_vs_source.map_all.mean"]
            lines.append(f"{task} 64b metah MAP@all {value:.4f} ≥ 0.97: {'met' if value >= 0.97 else 'MISSED'}")
            value = row64["target_vs_source.map_radius2.mean"]
            lines.append(f"{task} 64b metah MAP@r≤2 {value:.4f} ≥ 0.95 (aim): {'met' if value >= 0.95 else 'MISSED'}")
    return lines


def plot_map_bars(rows: list[dict[str, Any]], path: Path) -> None:
    tasks = sorted({r["task"] for r in rows})
    figure = Figure(figsize=(6 * len(tasks), 4))
    for position, task in enumerate(tasks, start=1):
        axis = figure.add_subplot(1, len(tasks), position)
        bits_list = sorted({r["bits"] for r in rows if r["task"] == task})
        for offset, method in enumerate(METHODS):
            members = {r["bits"]: r for r in rows if r["task"] == task and r["method"] == method}
            xs = [i + (offset - 1) * 0.27 for i, bits in enumerate(bits_list) if bits in members]
            means = [members[b]["target_vs_source.map_all.mean"] for b in bits_list if b in members]
            stds = [members[b]["target_vs_source.map_all.std"] for b in bits_list if b in members]
            axis.bar(xs, means, width=0.27, yerr=stds, capsize=3, label=method)
        axis.set_xticks(range(len(bits_list)), [f"{b} bits" for b in bits_list])
        axis.set_ylim(0, 1)
        axis.set_title(f"{task}: MAP@all, target queries vs source database")
        axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def encoding_throughput(model_path: Path, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Images per second of the eager encoder vs the exported artefact, same batch, interleaved runs."""
    from model.factory import restore_network

    loaded = load_encoder(model_path)
    eager = restore_network(model_path.with_name("checkpoint.pt")).net.encoder().eval()
    timings: dict[str, list[float]] = {"eager": [], "artefact": []}
    with torch.inference_mode():
        for _ in range(2):  # warm-up
            encode_images(eager, images, batch_size=images.shape[0])
            encode_images(loaded.module, images, batch_size=images.shape[0])
        for _ in range(repeats):
            for name, module in (("eager", eager), ("artefact", loaded.module)):
                started = time.perf_counter()
                encode_images(module, images, batch_size=images.shape[0])
                timings[name].append(time.perf_counter() - started)
    eager_rate = images.shape[0] / statistics.median(timings["eager"])
    artefact_rate = images.shape[0] / statistics.median(timings["artefact"])
    return {
        "batch": images.shape[0],
        "eager_images_per_s": round(eager_rate, 1),
        "artefact_images_per_s": round(artefact_rate, 1),
        "ratio": round(artefact_rate / eager_rate, 3),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/digits"))
    parser.add_argument("--work", type=Path, default=Path("var/bench-digits"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--bits", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=None, help="override the default (TrainConfig)")
    parser.add_argument("--eval-queries", type=int, default=500, help="source self-retrieval queries per run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", type=Path, default=None, help="JSON/TOML TrainConfig settings for every run")
    parser.add_argument("--throughput-repeats", type=int, default=7, help="0 skips the throughput measurement")
    parser.add_argument("--prepare-only", action="store_true", help="write the image folders and stop")
    parser.add_argument(
        "--throughput-run",
        type=Path,
        default=None,
        help="run folder (model.pt + checkpoint.pt) for the throughput check",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.jsonl"
    runs = load_runs(runs_path)
    started = time.perf_counter()
    for task in args.tasks:
        for seed in args.seeds:
            folders = materialise(task, seed, args.work)
            if args.prepare_only:
                continue
            pending = [
                (bits, method)
                for bits in args.bits
                for method in args.methods
                if run_key(task, bits, method, seed) not in runs
            ]
            if not pending:
                continue
            size = (32, 32)
            queries = load_labelled_folder(folders.queries, size, what="query")
            eval_sets = {
                "target_vs_source": (queries, load_labelled_folder(folders.source, size, what="source")),
                "target_vs_target": (
                    queries,
                    load_labelled_folder(folders.target_train_labelled, size, what="target"),
                ),
            }
            for bits, method in pending:
                record = one_run(task, bits, method, seed, folders, eval_sets, args)
                runs[record["key"]] = record
                with runs_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(
                    f"{record['key']}: MAP@all {record['target_vs_source']['map_all']:.4f} "
                    f"(target db {record['target_vs_target']['map_all']:.4f}) in {record['train_seconds']:.0f}s",
                    flush=True,
                )
    if args.prepare_only:
        print(f"image folders written under {args.work}")
        return
    selected = [
        r
        for r in runs.values()
        if r["task"] in args.tasks
        and r["bits"] in args.bits
        and r["method"] in args.methods
        and r["seed"] in args.seeds
    ]
    rows = aggregate(selected)
    throughput: list[dict[str, float]] = []
    sample_run = next((r for r in selected if r["method"] == "metah" and r["bits"] == max(args.bits)), None)
    run_dir = args.throughput_run
    if run_dir is None and sample_run is not None:
        run_dir = (
            args.work / "runs" / sample_run["task"] / f"{sample_run['bits']}b" / "metah" / f"seed{sample_run['seed']}"
        )
    if run_dir is not None and (run_dir / "model.pt").exists() and args.throughput_repeats > 0:
        images = np.stack(
            [
                np.asarray(Image.fromarray(a).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
                for a in load_digits("usps").images[:256]
            ]
        )
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        throughput = [
            encoding_throughput(run_dir / "model.pt", batch[:size], args.throughput_repeats) for size in (1, 16, 256)
        ]
    summary: dict[str, Any] = {
        "machine": machine(),
        "run_machines": sorted({json.dumps(r.get("machine", {}), sort_keys=True) for r in selected}),
        "command": "scripts/bench_digits.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k in ("tasks", "bits", "methods", "seeds", "iterations") and v
        ),
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
        "rows": rows,
        "targets": check_targets(rows),
        "encoding_throughput": throughput,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    md = [
        "# Digit benchmark",
        "",
        f"Command: `{summary['command']}`",
        "",
        "Training runs ran on: " + "; ".join(summary["run_machines"]),
        "",
        f"This summary and the throughput check ran on: {json.dumps(summary['machine'])}",
        "",
        "## Target queries vs source database (domain-adaptive retrieval)",
        "",
        markdown_table(rows, "target_vs_source"),
        "",
        "## Target queries vs target database (TAH protocol)",
        "",
        markdown_table(rows, "target_vs_target"),
        "",
        "## Targets",
        "",
        *[f"- {line}" for line in summary["targets"]],
        "",
        "## Encoding throughput: exported artefact vs eager model, same batch (CPU)",
        "",
        "| batch | eager img/s | artefact img/s | ratio | threads |",
        "|---:|---:|---:|---:|---:|",
        *[
            "| "
            + " | ".join(
                str(t[key]) for key in ("batch", "eager_images_per_s", "artefact_images_per_s", "ratio", "threads")
            )
            + " |"
            for t in throughput
        ],
        "",
    ]
    (args.out / "results.md").write_text("\n".join(md))
    plot_map_bars(rows, args.out / "map_by_bits.png")
    for task in args.tasks:
        curves = {}
        for method in args.methods:
            run = next(
                (
                    r
                    for r in selected
                    if r["task"] == task
                    and r["method"] == method
                    and r["bits"] == max(args.bits)
                    and r["seed"] == min(args.seeds)
                ),
                None,
            )
            if run is not None:
                pr = run["target_vs_source"]["pr_curve"]
                precision = np.array([np.nan if p is None else p for p in pr["precision"]], dtype=np.float64)
                recall = np.array(pr["recall"], dtype=np.float64)
                curves[method] = PRCurve(radius=np.arange(len(recall)), precision=precision, recall=recall)
        if curves:
            plot_pr_curves(
                curves,
                args.out / f"pr_{task}_{max(args.bits)}b.png",
                title=f"{task}, {max(args.bits)} bits, seed {min(args.seeds)}",
            )
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
