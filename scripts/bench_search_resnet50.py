"""Single-search overhead with a heavy backbone (issue 6: "with resnet50, ≤ 1.2×"): HTTP vs the same decode →
resize → encode → index search in-process, interleaved, at one torch thread as the service runs.

The artefact is a ResNet-50 MeTAH encoder trained for one step (no ImageNet weights can be downloaded here, and
weights do not change the cost of a forward pass): this measures the service around the model, not retrieval
quality. Writes OUT/resnet50.json and OUT/resnet50.md.

    .venv/bin/python -m scripts.bench_search_resnet50 --out benchmarks/service
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import TrainConfig
from model.datasets import load_digits, stratified_sample, write_image_folder
from model.export import load_encoder
from model.train import train
from scripts.bench_harness import (
    build_index,
    describe,
    image_sets,
    machine,
    metah_serve,
    single_searches,
    single_uploads_over_http,
    verdict,
)
from service.pipeline import decode, encode
from service.settings import Settings

RATIO_TARGET = 1.2


def resnet50_artefact(work: Path) -> Path:
    """A ResNet-50 encoder (64 bits, 224×224) after one training step on a few digits."""
    mnist, usps = load_digits("mnist"), load_digits("usps")
    source = write_image_folder(mnist.take(stratified_sample(mnist.labels, 2, 0)), work / "source")
    target = write_image_folder(usps.take(stratified_sample(usps.labels, 2, 0)), work / "target", labelled=False)
    config = TrainConfig(backbone="resnet50", iterations=1, batch_size=4, eval_queries=4, augment=False)
    return train(config, source, target, work / "run", show_progress=False).paths.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("var/bench-resnet50"))
    parser.add_argument("--stored", type=int, default=100, help="images uploaded before searching")
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(Settings.model_construct().torch_threads)
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        model = resnet50_artefact(Path(scratch))
        encoder = load_encoder(model)
        max_pixels = Settings.model_construct().max_pixels
        _, stored, queries = image_sets(0, args.stored, args.queries)
        with metah_serve(Path(scratch) / "data", model, workers=0, log_path=args.work / "serve.log") as server:
            uploads = single_uploads_over_http(server, stored)
            codes = np.concatenate([encode(encoder, decode(encoder, u.data, max_pixels)[None]) for u in stored])
            ids = np.arange(len(codes), dtype=np.int64)
            index = build_index(
                str(encoder.metadata["model_version"]), encoder.bits, ids, codes, [u.domain for u in stored]
            )
            search = single_searches(server, encoder, index, queries, max_pixels)
    value = search["http"]["median_ms"] / search["in_process"]["median_ms"]
    results: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "scripts.bench_search_resnet50", *sys.argv[1:]]),
        "model": f"{encoder.metadata['model_version']} (resnet50, {encoder.bits} bits, input {encoder.input_size})",
        "uploads": {k: v for k, v in uploads.items() if k != "codes"},
        "search": search,
        "median_ratio": value,
        "target": f"HTTP / in-process median {value:.3f}× (≤ {RATIO_TARGET}×): {verdict(value <= RATIO_TARGET)}",
        "wall_seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "resnet50.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    http, local = search["http"], search["in_process"]
    (args.out / "resnet50.md").write_text(
        f"# Single search with ResNet-50: HTTP vs in-process\n\n"
        f"Machine: {describe(results['machine'])}\nDate: {results['date']}. Command: `{results['command']}`\n"
        f"Model: {results['model']}; {len(stored)} stored images, {search['queries']} queries "
        f"(one torch thread, as the service runs).\n\n"
        f"| path | median ms | p99 ms |\n|---|---:|---:|\n"
        f"| in-process decode → resize → encode → index search | {local['median_ms']:.1f} | {local['p99_ms']:.1f} |\n"
        f"| `POST /v1/search` | {http['median_ms']:.1f} | {http['p99_ms']:.1f} |\n\n"
        f"- {results['target']}\n- distance mismatches {search['distance_mismatches']}, errors {search['errors']}\n"
    )
    print((args.out / "resnet50.md").read_text())


if __name__ == "__main__":
    main()
