"""Would averaging each image's features with its mirror image's (test-time flip) lift photo retrieval? A probe.

The plain image and its left-right mirror of every PACS photo, cartoon and sketch go once through frozen
EfficientNet-Lite0 (ImageNet weights, the product's preprocessing). The frozen default's own knob-sweep runs
(``scripts.bench_knobs``' ``frozen-default`` row: 64 bits, seeds 0 and 1, already trained in ``--work``) hash
them with their hash layer, and their **validation** queries (the benchmark's split) are ranked against the photo
database four ways: plain codes on both sides (what the product does), flip-averaged features on both sides (an
encoder that runs the backbone twice per image), on the database only (ingestion pays, search does not) and on the
queries only. No test query is read, and nothing is retrained.

    .venv/bin/python -m scripts.probe_flip --pacs ../shared/data/pacs --out benchmarks/retrieval-flip/probe

Features are kept in ``--features`` (one ``.npz`` per domain; a domain already there is not computed again).
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

from model.backbones import build_backbone
from model.data import list_labelled_folder
from model.factory import restore_network
from model.metrics import evaluate_retrieval
from model.normalize import Normalize
from model.objective import LossWeights
from model.preprocess import decode_image
from scripts.bench import RunSpec, Settings, signs, split_target, task_files
from scripts.bench_knobs import FROZEN_DEFAULT, SWEEP_WEIGHTS
from scripts.probe_features import features_by_domain
from workbench.machine import machine
from workbench.output import generated_by, write_results

TASKS = ("photo-cartoon", "photo-sketch")
SEEDS = (0, 1)
VARIANT = f"{SWEEP_WEIGHTS}+{FROZEN_DEFAULT}"  # the knob sweep's run of today's frozen default
# (database side, query side): which features each side is hashed from
WAYS = {
    "plain": ("plain", "plain"),
    "flip both": ("flip", "flip"),
    "flip database": ("flip", "plain"),
    "flip queries": ("plain", "flip"),
}


def extract(folder: Path, out: Path) -> tuple[str, int]:
    """Lite0's features of every image of one labelled folder and of its mirror image → ``out`` (npz)."""
    torch.set_num_threads(1)
    backbone = build_backbone("efficientnet_lite0")
    module = backbone.module.eval()
    normalize = Normalize(backbone.mean, backbone.std)
    files = list_labelled_folder(folder, what=folder.name)
    plain, mirrored = [], []
    with torch.no_grad():
        for path in files.paths:
            pixels = torch.from_numpy(decode_image(path.read_bytes(), backbone.input_size)).permute(2, 0, 1)
            batch = normalize(torch.stack([pixels, pixels.flip(-1)]).float().div(255.0))
            features = module(batch)
            plain.append(features[0])
            mirrored.append(features[1])
    np.savez(out, labels=files.labels.numpy(), plain=torch.stack(plain).numpy(), mirror=torch.stack(mirrored).numpy())
    return folder.name, len(files.paths)


def score(task: str, seed: int, data: dict[str, Any], work: Path, pacs: Path) -> dict[str, float]:
    """Validation MAP@all of one run, each of :data:`WAYS`."""
    source, target = data["photo"], data[task.split("-")[1]]
    split = split_target(task, task_files(task, work, pacs).target, seed, work)
    settings = Settings(work, pacs, work / "unused-cache", None, "cpu", 1, 0)  # only its run folder layout
    run_dir = settings.run_dir(RunSpec(task, "metah", 64, seed, VARIANT, LossWeights(), "knobs").key)
    projection = restore_network(run_dir / "checkpoint.pt").net.heads.hash.projection().eval()
    with torch.no_grad():
        sides = {
            name: {
                "plain": signs(projection(torch.from_numpy(features["plain"]).float())),
                "flip": signs(projection(torch.from_numpy((features["plain"] + features["mirror"]) / 2).float())),
            }
            for name, features in (("source", source), ("target", target))
        }
    query_labels = target["labels"][split.validation]
    result = {}
    for way, (database, queries) in WAYS.items():
        query_codes = sides["target"][queries][split.validation]
        found = evaluate_retrieval(query_codes, query_labels, sides["source"][database], source["labels"])
        result[way] = float(found.map_all)
    return result


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Test-time flip: validation MAP@all of the frozen default's runs, 64 bits",
        "",
        f"{generated_by(results)} Runs: `{VARIANT}` of "
        "`scripts.bench_knobs` (not retrained); validation queries of each seed vs the photo database; features "
        "recomputed here for the plain and the mirrored image.",
        "",
        f"| task | seed | {' | '.join(WAYS)} |",
        f"|---|---:|{'---:|' * len(WAYS)}",
    ]
    for row in results["runs"]:
        lines.append(f"| {row['task']} | {row['seed']} | {' | '.join(f'{row[w]:.4f}' for w in WAYS)} |")
    means = {way: statistics.fmean(row[way] for row in results["runs"]) for way in WAYS}
    lines.append(f"| mean | | {' | '.join(f'{means[w]:.4f}' for w in WAYS)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pacs", type=Path, default=Path("../shared/data/pacs"))
    parser.add_argument("--work", type=Path, default=Path("var/bench"), help="scripts.bench_knobs' work folder")
    parser.add_argument("--features", type=Path, default=Path("var/probe-flip"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/retrieval-flip/probe"))
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    data = features_by_domain(extract, args.pacs, args.features, args.processes)
    runs = [
        {"task": task, "seed": seed, **score(task, seed, data, args.work.resolve(), args.pacs.resolve())}
        for task in TASKS
        for seed in SEEDS
    ]
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "python -m scripts.probe_flip " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "variant": VARIANT,
        "runs": runs,
    }
    write_results(args.out, results, report(results))


if __name__ == "__main__":
    main()
