"""The service around a heavy backbone: the same work over HTTP and in-process, in the same run (issue 6, "with
resnet50, ≤ 1.2×", and "Performance with a real backbone"). The machine is shared, so every figure is a ratio of
two measurements taken minutes apart, alternating:

1. **Encoding**: the exported artefact (TorchScript) vs the eager network rebuilt from the ``checkpoint.pt``
   beside it, same batch (1, 16, 64), at one torch thread (the service's); the two alternate, median.
2. **Bulk ingestion**: a zip of the library (``manifest.csv``) to ``POST /v1/ingest-jobs`` of a real
   ``metah serve`` (fresh data dir, one job worker), timed until the job has succeeded; vs probe → decode →
   encode in batches of ``METAH_INGEST_BATCH_SIZE`` in-process, at the service's one torch thread. One fresh
   server per round; the rounds alternate which side goes first; the ratio of the medians counts.
3. **Single search**: ``POST /v1/search`` (k=10) vs probe → decode → encode → index search in-process on the
   same codes, query by query; the hits' distances must agree.

Without ``--model``: a ResNet-50 encoder trained for one step on a few digits (no ImageNet weights can be
downloaded here, and weights do not change the cost of a forward pass), digits for the library and the queries;
writes ``OUT/resnet50.json`` and ``OUT/resnet50.md``. With ``--model RUN/model.pt`` (a ``metah train`` run: the
eager side needs its ``checkpoint.pt``) and ``--images pacs``: the PACS photos and cartoons of ``data/pacs``
(JPEG) as the library, held-out ones as queries; writes ``OUT/<backbone>.json`` and ``.md``.

    .venv/bin/python -m scripts.bench_search_resnet50 --out benchmarks/service
    METAH_FEATURE_CACHE=var/bench-lite0/cache .venv/bin/metah train --source data/pacs/photo \\
        --target data/pacs/sketch --out var/bench-lite0/run --iterations 200
    .venv/bin/python -m scripts.bench_search_resnet50 --model var/bench-lite0/run/model.pt --images pacs \\
        --out benchmarks/service
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import TrainConfig
from model.export import LoadedEncoder, load_encoder
from model.train import train
from scripts.bench_harness import (
    Server,
    build_index,
    describe,
    encoding_sweep,
    image_sets,
    ingest_in_process,
    ingest_job_over_http,
    metah_serve,
    single_search_table,
    single_searches,
    wait_for_worker,
)
from scripts.bench_stats import git_commit
from service.pipeline import decode
from service.settings import Settings
from workbench.datasets import load_digits, stratified_sample, write_image_folder
from workbench.loadtest import Upload, identical_results, photo_sets, ratio, verdict
from workbench.machine import machine

ENCODE_TARGET = 1.0  # artefact / eager images/s, at least
SEARCH_TARGET = 1.2  # HTTP / in-process median latency, at most
INGEST_TARGET = 0.8  # HTTP / in-process images/s, at least
PACS = Path("data/pacs")
PACS_DOMAINS = ("photo", "cartoon")


def resnet50_artefact(work: Path) -> Path:
    """A ResNet-50 encoder (64 bits, 224×224) after one training step on a few digits."""
    mnist, usps = load_digits("mnist"), load_digits("usps")
    source = write_image_folder(mnist.take(stratified_sample(mnist.labels, 2, 0)), work / "source")
    target = write_image_folder(usps.take(stratified_sample(usps.labels, 2, 0)), work / "target", labelled=False)
    config = TrainConfig(backbone="resnet50", iterations=1, batch_size=4, eval_queries=4, augment=False)
    return train(config, source, target, work / "run", show_progress=False).paths.model


def library_and_queries(images: str, stored: int, queries: int, seed: int) -> tuple[list[Upload], list[Upload]]:
    """digits: MNIST to store, USPS + MNIST-M to query; pacs: photos + cartoons, ``queries`` held out."""
    if images == "pacs":
        return photo_sets(PACS, PACS_DOMAINS, queries, seed)
    _, library, query_set = image_sets(0, stored, queries)
    return library, query_set


def ingestion_round(
    server: Server, encoder: LoadedEncoder, library: Sequence[Upload], http_first: bool, settings: Settings
) -> dict[str, Any]:
    """One zip through ``POST /v1/ingest-jobs`` and the same images in-process, in the given order."""
    out: dict[str, Any] = {"http_first": http_first}
    for side in ("http", "in_process") if http_first else ("in_process", "http"):
        if side == "http":
            out["http"] = ingest_job_over_http(server, library)
        else:
            out["in_process"] = ingest_in_process(encoder, library, settings.ingest_batch_size, settings.max_pixels)
    out["ratio"] = ratio(out["http"]["images_per_s"], out["in_process"]["images_per_s"])
    print(
        f"  ingestion: in-process {out['in_process']['images_per_s']:.1f} img/s, "
        f"HTTP {out['http']['images_per_s']:.1f} img/s ({out['ratio']:.3f}×)",
        flush=True,
    )
    return out


def summarise_ingestion(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    http = float(np.median([r["http"]["images_per_s"] for r in rounds]))
    local = float(np.median([r["in_process"]["images_per_s"] for r in rounds]))
    processing = [r["http"]["images_per_s_job_processing"] or float("nan") for r in rounds]
    return {
        "median_http_images_per_s": http,
        "median_in_process_images_per_s": local,
        "median_job_processing_images_per_s": float(np.median(processing)),
        "ratio": ratio(http, local),
        "round_ratios": [r["ratio"] for r in rounds],
    }


def targets(results: dict[str, Any]) -> list[str]:
    out = []
    for row in results.get("encoding", []):
        out.append(
            f"encoding, {row['threads']} thread(s), batch {row['batch']}: artefact / eager {row['ratio']:.2f}× "
            f"(≥ {ENCODE_TARGET}×): {verdict(row['ratio'] >= ENCODE_TARGET)}"
        )
    if ingestion := results.get("ingestion"):
        value = ingestion["summary"]["ratio"]
        out.append(
            f"bulk ingestion HTTP / in-process {value:.2f}× (≥ {INGEST_TARGET}×): {verdict(value >= INGEST_TARGET)}"
        )
    if search := results.get("search"):
        value = results["search_ratio"]
        out.append(
            f"single search HTTP / in-process median {value:.3f}× (≤ {SEARCH_TARGET}×): "
            f"{verdict(value <= SEARCH_TARGET)}"
        )
        out.append(identical_results(search))
    return out


def markdown(results: dict[str, Any]) -> str:
    enc = results["encoding"]
    lines = [
        f"# The service around {results['backbone']}: HTTP vs in-process, same run",
        "",
        f"Machine: {describe(results['machine'])}, {results['load_average_at_end']} at end.",
        f"Commit {results['commit']}. Date: {results['date']}. Wall time {results['wall_seconds']:.0f} s.",
        f"Command: `{results['command']}`",
        f"Model: {results['model']}. Library: {results['library']}; queries: {results['queries']}.",
        *([results["note"]] if results["note"] else []),
        "",
        "## Targets",
        "",
        *[f"- {line}" for line in results["targets"]],
        "",
        "## 1. Encoding: exported artefact vs eager model, same batch",
        "",
        f"Median of {results['encode_repeats']} alternating timings of at least {results['encode_images']} images "
        "each, after one warm-up round.",
        "",
        "| torch threads | batch | eager img/s | artefact img/s | artefact / eager | same bits |",
        "|---:|---:|---:|---:|---:|---|",
        *[
            f"| {r['threads']} | {r['batch']} | {r['eager_images_per_s']:.1f} | {r['artefact_images_per_s']:.1f} | "
            f"{r['ratio']:.2f} | {r['same_bits']} |"
            for r in enc
        ],
    ]
    if ing := results.get("ingestion"):
        lines += [
            "",
            f"## 2. Bulk ingestion: `POST /v1/ingest-jobs` vs in-process, {len(ing['rounds'])} rounds",
            "",
            f"In-process: probe → decode → encode in batches of {ing['batch_size']} at one torch thread (the job "
            "worker's setting). HTTP: the client's wall time from the upload until the job has succeeded, on a fresh "
            "server per round (API + one job worker; client, API and worker share the machine).",
            "",
            "| round | first | images | in-process img/s | HTTP img/s | job processing img/s | HTTP / in-process "
            "| in-process CPU s | worker CPU s | API CPU s |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {i + 1} | {'HTTP' if r['http_first'] else 'in-process'} | {r['http']['result']['created']} | "
                f"{r['in_process']['images_per_s']:.1f} | {r['http']['images_per_s']:.1f} | "
                f"{r['http']['images_per_s_job_processing'] or float('nan'):.1f} | {r['ratio']:.3f} | "
                f"{r['in_process']['cpu_s']:.1f} | {r['http']['cpu_s'].get('worker0', float('nan')):.1f} | "
                f"{r['http']['cpu_s']['api']:.1f} |"
                for i, r in enumerate(ing["rounds"])
            ],
            f"| median | | | {ing['summary']['median_in_process_images_per_s']:.1f} | "
            f"{ing['summary']['median_http_images_per_s']:.1f} | "
            f"{ing['summary']['median_job_processing_images_per_s']:.1f} | **{ing['summary']['ratio']:.3f}** | | | |",
            "",
            "CPU s: user + system time of this process during the in-process side, of the job worker and of the API "
            "process from the upload until the job had succeeded (`/proc`, 10 ms ticks). Wall time beyond CPU time "
            "is time spent waiting for a core the other jobs on the machine held.",
        ]
    if search := results.get("search"):
        cpu = search["cpu_ms"]
        lines += [
            *single_search_table(
                search,
                f"## 3. Single search (k=10), {search['queries']} queries, interleaved one by one",
                "in-process probe → decode → encode → index search",
                1,
            ),
            f"Median overhead {search['median_overhead_ms']:.1f} ms ({results['search_ratio']:.3f}×). Server stage "
            "means (ms, from `/metrics`): "
            + ", ".join(f"{k} {v:.1f}" for k, v in search["server_stage_mean_ms"].items())
            + f". Distance mismatches {search['distance_mismatches']}, errors {search['errors']}.",
            "",
            f"CPU per search, mean ms: in-process {cpu['in_process']['mean_ms']:.1f}; over HTTP, the server process "
            f"{cpu['server']['mean_ms']:.1f} (10 ms ticks) and the client's thread {cpu['client']['mean_ms']:.1f}. "
            f"Load average {results['machine']['load_average_at_start']} at start on "
            f"{results['machine']['cpus_available']} CPUs.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, help="an artefact with its checkpoint.pt beside it (default: ResNet-50)")
    parser.add_argument("--images", choices=("digits", "pacs"), default="digits", help="library and queries")
    parser.add_argument("--work", type=Path, default=Path("var/bench-backbone"), help="scratch, server logs")
    parser.add_argument("--stored", type=int, default=100, help="digits in the library (pacs: all but the queries)")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument(
        "--rounds", type=int, default=3, help="bulk ingestion rounds, one fresh server each; 0: encoding only"
    )
    parser.add_argument("--batches", default="1,16,64", help="encoding batch sizes")
    parser.add_argument("--threads", default="1", help="torch threads for the encoding sweep (the service: 1)")
    parser.add_argument("--encode-images", type=int, default=64, help="images per encoding timing, at least")
    parser.add_argument("--encode-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="which PACS images are held out as queries")
    parser.add_argument("--name", help="OUT/NAME.json and .md (default: resnet50, or the artefact's backbone)")
    parser.add_argument("--note", default="", help="a line for the report: what this run compares")
    args = parser.parse_args()
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    settings = Settings.model_construct()  # the defaults metah serve runs with
    results: dict[str, Any] = {
        "machine": machine(),
        "commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "scripts.bench_search_resnet50", *sys.argv[1:]]),
        "note": args.note,
    }
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        model = args.model or resnet50_artefact(Path(scratch))
        encoder = load_encoder(model)
        backbone = str(encoder.metadata["backbone"])
        results["backbone"] = backbone
        results["model"] = (
            f"{encoder.metadata['model_version']} ({backbone}, {encoder.bits} bits, input {encoder.input_size})"
        )
        library, queries = library_and_queries(args.images, args.stored, args.queries, args.seed)
        results["library"] = f"{len(library)} {args.images} images ({', '.join(sorted({u.domain for u in library}))})"
        results["queries"] = f"{len(queries)} {args.images} images never stored"
        print(f"{results['model']}: {results['library']}, {results['queries']}", flush=True)

        print("1. encoding: artefact vs eager", flush=True)
        batches = [int(b) for b in args.batches.split(",")]
        pixels = np.stack([decode(encoder, u.data, settings.max_pixels) for u in library[: max(batches)]])
        results["encode_images"], results["encode_repeats"] = args.encode_images, args.encode_repeats
        results["encoding"] = encoding_sweep(
            model, pixels, args.encode_repeats, [int(t) for t in args.threads.split(",")], batches, args.encode_images
        )

        torch.set_num_threads(settings.torch_threads)  # the service's setting, for every baseline below
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            print(f"2. bulk ingestion, round {r + 1}" + (", 3. single search" if r == args.rounds - 1 else ""))
            data_dir = Path(scratch) / f"data-{r}"
            with metah_serve(data_dir, model, workers=1, log_path=args.work / "serve.log") as server:
                wait_for_worker(server)
                rounds.append(ingestion_round(server, encoder, library, r % 2 == 1, settings))
                codes = np.concatenate(rounds[-1]["in_process"].pop("codes"))
                if r == args.rounds - 1:
                    ids = np.arange(len(codes), dtype=np.int64)
                    version = str(encoder.metadata["model_version"])
                    index = build_index(version, encoder.bits, ids, codes, [u.domain for u in library])
                    search = single_searches(server, encoder, index, queries, settings.max_pixels)
                    results["search"] = search
                    results["search_ratio"] = ratio(search["http"]["median_ms"], search["in_process"]["median_ms"])
        if rounds:
            results["ingestion"] = {
                "batch_size": settings.ingest_batch_size,
                "rounds": rounds,
                "summary": summarise_ingestion(rounds),
            }
    results["targets"] = targets(results)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_seconds"] = time.perf_counter() - started
    name = args.name or ("resnet50" if args.model is None else backbone)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    print((args.out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
