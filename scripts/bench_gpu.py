"""Finetune mode on a lent GPU: MAP and time of what ``metah train`` does on PACS photos when it has a CUDA GPU.

On a GPU the product's ``auto`` mode is ``finetune`` for a pretrained backbone (model.choice): EfficientNet-Lite0
trained end to end, its backbone at lr × ``backbone_lr_mult`` (0.1), photo augmentation (random resized crop, flip,
colour jitter), bfloat16 autocast, 1,200 steps at 10⁻³ (model.config.MODE_SCHEDULES) and each method's finetune
loss weights (model.objective.METHODS). Those weights were chosen on the digit tasks: nothing here was tuned on
PACS, so both query splits are reported. The splits, the scoring (codes from the exported ``model.pt`` itself, on
the GPU) and the raw-line format are ``scripts.bench``'s; 64 bits, seeds 0–2 by default (those seeds' frozen
runs in ``benchmarks/retrieval`` are the paired comparison), MeTAH first, then TAH and source-only, ``--processes``
runs sharing the GPU, as many as ``--budget`` seconds allow. ``--time`` first times one finetune epoch alone
(``scripts.bench.time_training``), ``--smoke`` only checks the path in a few steps (one domain is enough).

    # on the GPU machine (the device tool), PACS copied next to the tree:
    python3 -m scripts.bench_gpu --pacs PACS --out OUT --time --budget 420
    # here, from the raw lines brought back:
    .venv/bin/python -m scripts.bench_gpu --report-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from model.config import TrainConfig
from model.data import list_labelled_folder
from model.evaluate import encode_files
from model.export import load_encoder
from model.objective import method_weights
from model.train import train
from scripts.bench import (
    METHODS,
    TASKS,
    RunSpec,
    Settings,
    chosen,
    execute,
    provenance,
    read_lines,
    time_training,
)
from scripts.bench_stats import describe_run, format_mean_std, paired_difference

GPU_TASKS = ("photo-cartoon", "photo-sketch")
VARIANT = "finetune-defaults"  # the product's finetune presets and schedule, untuned on these tasks
PRIORITY = ("metah", "tah", "source_only")  # what is run first when the budget runs short


def specs(methods: Sequence[str], seeds: Sequence[int], done: set[str]) -> list[RunSpec]:
    """One 64-bit finetune run per method, seed and task, in :data:`PRIORITY` order, then by seed."""
    ordered = [m for m in PRIORITY if m in methods]
    planned = [
        RunSpec(task, method, 64, seed, VARIANT, method_weights(method, "finetune"), "gpu", (("mode", "finetune"),))
        for method in ordered
        for seed in seeds
        for task in GPU_TASKS
    ]
    return [spec for spec in planned if spec.key not in done]


def smoke(settings: Settings, out: Path, steps: int) -> dict[str, Any]:
    """A few finetune steps on the photo domain as both source and target, the artefact exported, loaded on the
    run's device and used to encode a batch: every part of the GPU path once, before the runs that count."""
    photos = settings.pacs / "photo"
    config = TrainConfig(method="metah", mode="finetune", iterations=steps, device=settings.device, eval_queries=20)
    started = time.perf_counter()
    result = train(config, photos, photos, settings.work / "smoke", show_progress=False)
    device = settings.scoring_device()
    loaded = load_encoder(result.paths.model, device)
    files = list_labelled_folder(photos).take(torch.arange(64).numpy())
    codes = encode_files(loaded.module, files, loaded.input_size, device=device)
    line = {
        "smoke": True,
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
        "device": result.metrics["device"],
        "batches": result.metrics["batches"],
        "mode": result.metrics["mode"],
        "codes_shape": list(codes.shape),
        "codes_are_signs": bool(((codes == 1) | (codes == -1)).all()),
        "final_loss": result.metrics["final_losses"].get("loss"),
        **describe_run(),
    }
    with (out / "smoke.jsonl").open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    return line


def _frozen_test(frozen: Sequence[dict[str, Any]], task: str, method: str, seeds: Sequence[int]) -> dict[int, float]:
    """The benchmark's frozen test MAP@all at 64 bits for the weights it chose, per seed (the paired comparison)."""
    choice = chosen(frozen, [t for t, spec in TASKS.items() if spec.family == "photos"], [0, 1])
    variant = choice.get(("frozen", method))
    return {
        r["seed"]: r["map_all"]
        for r in frozen
        if r["split"] == "test"
        and r["task"] == task
        and r["method"] == method
        and r["bits"] == 64
        and r["variant"] == variant
        and r["seed"] in seeds
    }


def report(runs: Sequence[dict[str, Any]], timings: Sequence[dict[str, Any]], frozen: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# Finetune mode on a GPU (PACS photos)",
        "",
        "Generated by `python -m scripts.bench_gpu --report-only` from `runs.jsonl` and `timing.jsonl`, brought back "
        "from a lent GPU machine (the device tool). The product's finetune defaults, untuned on these tasks (their "
        "loss weights were chosen on the digit tasks), so validation and test queries are both shown; MAP@all of "
        "target queries against the photo database, 64 bits, mean ± sample std over the seeds. *Frozen (CPU)*: the "
        "same seeds' test MAP@all of the frozen default in `benchmarks/retrieval` (same splits), and the paired "
        "difference finetune − frozen with its 95 % t interval. Runs shared the GPU (`processes` at once): their "
        "times are not a lone run's; the one-epoch timing below ran alone.",
        "",
        *provenance(runs),
        "",
        "| task | method | validation | test | frozen (CPU), test | finetune − frozen | seeds | run time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task in GPU_TASKS:
        for method in METHODS:
            rows = {
                s: [r for r in runs if r["task"] == task and r["method"] == method and r["split"] == s]
                for s in ("validation", "test")
            }
            if not rows["test"]:
                continue
            by_seed = {r["seed"]: r["map_all"] for r in rows["test"]}
            seeds = sorted(by_seed)
            frozen_by_seed = _frozen_test(frozen, task, method, seeds)
            cells = [format_mean_std([r["map_all"] for r in rows[s]]) for s in ("validation", "test")]
            paired = ""
            if frozen_by_seed and sorted(frozen_by_seed) == seeds:
                cells.append(format_mean_std([frozen_by_seed[s] for s in seeds]))
                diff = paired_difference([by_seed[s] for s in seeds], [frozen_by_seed[s] for s in seeds])
                if len(seeds) > 1:  # one seed has no interval
                    paired = f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
            else:
                cells.append("")
            processes = sorted({int(r.get("processes", 1)) for r in rows["test"]})
            seconds = statistics.fmean(r["run_seconds"] for r in rows["test"])
            lines.append(
                f"| {task} | {method} | {' | '.join(cells)} | {paired} | {len(seeds)} | "
                f"{seconds:.0f} ({'/'.join(map(str, processes))} at once) |"
            )
    for t in timings:
        lines += [
            "",
            f"One finetune epoch alone ({t['task']}, {t['iterations']} steps of {t['batch_size']} source + "
            f"{t['batch_size']} target images, data decoding, evaluation and export included): "
            f"**{t['wall_seconds']:.1f} s** on {t['device']} ({t['date']}, commit `{t['commit']}`, {t['machine']}).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(PRIORITY))
    parser.add_argument("--processes", type=int, default=6, help="runs sharing the GPU at once")
    parser.add_argument("--budget", type=float, default=None, help="seconds; no run starts that would end after")
    parser.add_argument("--iterations", type=int, default=None, help="override every run's steps (a quick check)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/retrieval-gpu"))
    parser.add_argument("--work", type=Path, default=Path("var/bench-gpu"))
    parser.add_argument("--pacs", type=Path, default=Path("../shared/data/pacs"))
    parser.add_argument("--frozen", type=Path, default=Path("benchmarks/retrieval/runs.jsonl"))
    parser.add_argument("--time", action="store_true", help="first time one finetune epoch alone")
    parser.add_argument("--smoke", type=int, default=0, metavar="STEPS", help="only check the GPU path")
    parser.add_argument("--report-only", action="store_true", help="rebuild results.md from the raw lines")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        args.work.resolve(), args.pacs.resolve(), args.work.resolve() / "cache", args.iterations, args.device, 1, 0
    )
    started = time.perf_counter()
    if args.smoke:
        print(json.dumps(smoke(settings, args.out, args.smoke)), flush=True)
        return
    if not args.report_only:
        if args.time:
            time_training(args, settings, ["finetune-epoch"])
        budget = None if args.budget is None else args.budget - (time.perf_counter() - started)
        todo = specs(args.methods, args.seeds, {r["key"] for r in read_lines(args.out / "runs.jsonl")})
        print(f"gpu: {len(todo)} run(s), {args.processes} at once, budget {budget} s", flush=True)
        left = execute(todo, settings, args.processes, args.out, budget)
        print(f"gpu: {len(left)} run(s) left for lack of time: {[spec.key for spec in left]}", flush=True)
    text = report(read_lines(args.out / "runs.jsonl"), read_lines(args.out / "timing.jsonl"), read_lines(args.frozen))
    (args.out / "results.md").write_text(text)


if __name__ == "__main__":
    main()
