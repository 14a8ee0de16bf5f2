"""Benchmark the HTTP service against in-process baselines run in the same invocation (issue 6, "Performance").

Every HTTP number is set against the same work done in this process on the same images, measured minutes apart
(searches interleaved one by one), so a busy machine shifts both sides:

1. **Encoding**: the exported TorchScript artefact (scripted + frozen) vs the eager network rebuilt from
   ``checkpoint.pt``, same batch, batch sizes 1…512, at one torch thread (the service's) and at all of them.
2. **Bulk ingestion**: a zip of real digit PNGs (``data/digits``, USPS + MNIST-M, ``manifest.csv``) sent to
   ``POST /v1/ingest-jobs`` of a real ``metah serve`` (fresh data dir, SQLite, ``METAH_WORKERS=1``), timed
   until the job has succeeded; vs ``service.pipeline`` probe → decode → encode (batches of
   ``METAH_INGEST_BATCH_SIZE``) in-process. Then single ``POST /v1/images`` uploads, one after another, vs
   :func:`service.pipeline.encode_upload` per image.
3. **Single search**: ``POST /v1/search`` (k=10) vs decode (probed in the same parse) → encode →
   ``HashIndex.search`` in-process on an index holding the same codes; the hits' distances must agree.
4. **Concurrency**: 1, 8 and 32 client threads (one ``httpx.Client`` each) for a bounded time at the stored
   count; and the in-process search path at 100k and 1M codes resampled from the real stored codes (the server
   cannot be filled that far from outside in minutes). Also the server's RSS per stored image.

    nice -n 10 .venv/bin/python -m scripts.bench_service --out benchmarks/service
    .venv/bin/python -m scripts.bench_service --quick --out var/bench-service-quick
    .venv/bin/python -m scripts.bench_service --profile --out benchmarks/service/profile

``--index-backend milvus-lite`` / ``milvus-server`` runs parts 2–4 against a server on the Milvus backend (a
Milvus Lite file in its data dir; or a Milvus 2.3.5 standalone server started here, the ``milvus`` wheel), its
in-process baselines unchanged (FAISS); the encoding sweep and the resampled in-process indexes, which do not
depend on the backend, are left out:

    .venv/bin/python -m scripts.bench_service --index-backend milvus-server --out benchmarks/service/milvus-server

``--profile`` samples the job worker with py-spy during the bulk ingestion (``OUT/profile-bulk-ingest.md``,
raw stacks in ``OUT/profile-bulk-ingest.raw``) and stops after that phase, since sampling skews what follows.

Results: ``OUT/results.json`` (every number, machine, date, command) and ``OUT/results.md``.
"""

from __future__ import annotations

import os

# libgomp reads this once when it loads (metah serve sets the same; see docs/index.md, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.threads import available_cpus
from model.export import LoadedEncoder, load_encoder
from scripts import pyspy
from scripts.bench_harness import (
    CLIENTS,
    MEMORY_FIELDS,
    K,
    Server,
    build_index,
    describe,
    encoding_sweep,
    http_caller,
    image_sets,
    indexed,
    ingest_in_process,
    ingest_job_over_http,
    local_caller,
    metah_serve,
    scaled_index,
    single_search_table,
    single_searches,
    single_uploads_over_http,
    wait_for_worker,
)
from scripts.demo_model import ensure_demo_model
from service.pipeline import decode, encode_upload, probe
from service.settings import Settings
from workbench.loadtest import Upload, latency_summary, load_test, ratio, targets
from workbench.machine import machine
from workbench.milvus import standalone_server
from workbench.processes import children_of
from workbench.sizes import parse_size, size_label

BATCH_SIZES = (1, 8, 32, 128, 512)
# ------------------------------------------------------------------------------------- 2. ingestion


def profile_ingestion(server: Server, uploads: Sequence[Upload], out: Path, base: dict[str, Any], command: str) -> None:
    """Run the bulk ingestion job while py-spy samples the worker; write the summary beside the raw stacks. The
    server runs one job worker (``METAH_INGEST_WORKERS=0``: no ingest lane), so the job runs where py-spy looks."""
    (worker,) = [pid for pid in children_of(server.pid) if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    out.mkdir(parents=True, exist_ok=True)
    raw, rate = out / "profile-bulk-ingest.raw", 200
    with pyspy.recording(worker, raw, rate=rate):
        job = ingest_job_over_http(server, uploads)
    header = (
        f"# Where the job worker's time goes during bulk ingestion\n\n"
        f"{describe(machine())}; {datetime.now(UTC).isoformat(timespec='seconds')}.\n"
        f"Command: `{command}` (py-spy {rate} Hz, nonblocking, "
        f"on the worker process).\n\n"
        f"{job['images']} images: the job took {job['job_processing_s']:.2f} s in the worker "
        f"({job['images_per_s_job_processing']:.0f} img/s while sampled); in-process probe → decode → encode of "
        f"the same images took {base['seconds']:.2f} s ({base['images_per_s']:.0f} img/s).\n\n"
    )
    (out / "profile-bulk-ingest.md").write_text(header + pyspy.summarise(raw, rate, focus="IngestJob._run"))
    print((out / "profile-bulk-ingest.md").read_text(), flush=True)


def singles_in_process(encoder: LoadedEncoder, uploads: Sequence[Upload], max_pixels: int) -> dict[str, Any]:
    """probe + :func:`service.pipeline.encode_upload` per image (a batch of one), as the single-upload route does."""
    latencies, codes = [], []
    started = time.perf_counter()
    for upload in uploads:
        t0 = time.perf_counter()
        probe(upload.data, max_pixels)
        codes.append(encode_upload(encoder, upload.data, max_pixels))
        latencies.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - started
    return {
        "images": len(uploads),
        "seconds": seconds,
        "images_per_s": len(uploads) / seconds,
        "latency": latency_summary(latencies),
        "codes": codes,
    }


# -------------------------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or value != value else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Service benchmark: HTTP vs in-process, same images, same run",
        "",
        f"Machine: {m['cpu']}, {m['cpus_available']} CPUs, {m['memory_gib']} GiB; Python {m['python']}, torch "
        f"{m['torch']}, faiss {m['faiss']}; niceness {m['niceness']}; load average {m['load_average_at_start']} "
        f"at start, {results['load_average_at_end']} at end.",
        f"Date: {results['date']}. Wall time: {results['wall_seconds']:.0f} s. Model: {results['model']}.",
        f"Command: `{results['command']}`. Commit: `{m.get('commit', 'not recorded')}`. Index backend of the "
        f"server: {results.get('index_backend', 'faiss')} (the in-process baselines use FAISS).",
        "",
        "Client, server and job worker share the same CPUs (loopback): every HTTP figure includes the client's own "
        "CPU time. The in-process baselines run at one torch thread, as the service does (`METAH_TORCH_THREADS=1`).",
        "",
        "## Targets",
        "",
        *[f"- {line}" for line in results["targets"]],
    ]
    if results.get("encoding"):
        lines += [
            "",
            "## 1. Encoding: exported artefact vs eager model, same batch",
            "",
            "| torch threads | batch | eager img/s | artefact img/s | artefact / eager | same bits |",
            "|---:|---:|---:|---:|---:|---|",
            *[
                f"| {r['threads']} | {r['batch']} | {fmt(r['eager_images_per_s'], 0)} | "
                f"{fmt(r['artefact_images_per_s'], 0)} | {r['ratio']:.2f} | {r['same_bits']} |"
                for r in results["encoding"]
            ],
        ]
    ing = results.get("ingestion")
    if ing:
        job, base, singles, single_base = ing["job"], ing["in_process"], ing["singles"], ing["singles_in_process"]
        lines += [
            "",
            "## 2. Ingestion",
            "",
            "| path | images | seconds | img/s | vs in-process batches |",
            "|---|---:|---:|---:|---:|",
            f"| in-process probe → decode → encode, batches of {ing['batch_size']} | {base['images']} | "
            f"{base['seconds']:.2f} | {fmt(base['images_per_s'])} | 1.00 |",
            f"| `POST /v1/ingest-jobs` zip, until the job succeeded | {job['result']['created']} | "
            f"{job['succeeded_s']:.2f} | {fmt(job['images_per_s'])} | {ing['job_ratio']:.2f} |",
            f"| … the job's own processing (started → finished) | {job['result']['created']} | "
            f"{fmt(job['job_processing_s'], 2)} | {fmt(job['images_per_s_job_processing'])} | "
            f"{fmt(ing['job_processing_ratio'], 2)} |",
            f"| in-process probe + `encode_upload`, one image at a time | {single_base['images']} | "
            f"{single_base['seconds']:.2f} | {fmt(single_base['images_per_s'])} | "
            f"{ratio(single_base['images_per_s'], base['images_per_s']):.2f} |",
            f"| `POST /v1/images`, one after another | {singles['images']} | {singles['seconds']:.2f} | "
            f"{fmt(singles['images_per_s'])} | {ing['singles_ratio']:.2f} |",
            "",
            f"Zip of {job['archive_bytes'] / 1024:,.0f} KiB: accepted (202) after {job['upload_accepted_s']:.2f} s; "
            f"queued {fmt(job['job_queued_s'], 2)} s before a worker took it; "
            f"job succeeded after {job['succeeded_s']:.2f} s; in the API's index after {job['in_api_index_s']:.2f} s. "
            f"Job result {job['result']}, {job['item_errors']} item errors. Single uploads: "
            f"{singles['created']} created, {singles['errors']} errors, latency median "
            f"{singles['latency']['median_ms']:.1f} ms, p99 {singles['latency']['p99_ms']:.1f} ms (in-process "
            f"{single_base['latency']['median_ms']:.2f} / {single_base['latency']['p99_ms']:.2f} ms); "
            f"{ing['singles_vs_single_in_process']:.2f}× the one-at-a-time in-process rate.",
        ]
    search = results.get("search")
    if search:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in search["server_stage_mean_ms"].items())
        lines += [
            *single_search_table(
                search,
                f"## 3. Single search (k={K}), {search['queries']} queries at {results['stored']:,} stored images",
                "in-process probe + decode (one parse) → encode → index search",
                2,
            ),
            f"Overhead of HTTP + service: median {search['median_overhead_ms']:.2f} ms, p99 "
            f"{search['p99_overhead_ms']:.2f} ms. Server stage means (ms, from `/metrics`): {stages}. "
            f"Errors {search['errors']}; hits whose distances differ from the in-process search: "
            f"{search['distance_mismatches']}.",
        ]
    conc = results.get("concurrency", [])
    if conc:
        lines += [
            "",
            "## 4. Concurrent searches",
            "",
            "| path | stored codes | clients | requests | QPS | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {r['path']} | {size_label(r['stored'])} | {r['clients']} | {r['requests']} | {fmt(r['qps'])} | "
                f"{r['latency_median_ms']:.2f} | {r['latency_p99_ms']:.2f} | {r['errors']} |"
                for r in conc
            ],
            "",
            "`http`: `POST /v1/search` on the real server holding the ingested digits. `in-process`: probe → decode "
            "→ encode → `HashIndex.search` in this process (no HTTP, no database), on the real codes and, beyond "
            "what was ingested, on codes drawn with replacement from the real stored codes (same domains). Its tail at "
            "8 and 32 threads is Python threads of one process taking turns on the GIL (the service bounds its CPU "
            "work to one thread per core instead).",
        ]
        for info in results.get("scaled_indexes", []):
            lines.append(
                f"- {size_label(info['n'])} resampled codes: index built in {info['build_s']:.2f} s, "
                f"{info['index_bytes_per_code']:.0f} B/code in the index, {info['rss_bytes_per_code']:.0f} B/code RSS."
            )
    memory = results.get("memory")
    if memory:
        lines += [
            "",
            "## Memory of `metah serve`",
            "",
            "| process | when | VmRSS MiB | RssAnon MiB | RssFile MiB |",
            "|---|---|---:|---:|---:|",
            *[
                f"| {process} | {when.replace('_', ' ')} | "
                + " | ".join(f"{values.get(key, 0) / 1024:.0f}" for key in MEMORY_FIELDS)
                + " |"
                for when, snapshot in memory["snapshots"].items()
                for process, values in snapshot.items()
            ],
            "",
            f"Growth of the API process while {memory['ingested']:,} images were ingested (and indexed): "
            f"{memory['api_rss_bytes_per_image']:.0f} bytes VmRSS, {memory['api_anon_bytes_per_image']:.0f} bytes "
            f"RssAnon per stored image (the index itself: {memory['index_bytes_per_code']:.0f} bytes per code). "
            "`import torch` alone is most of the base: RssFile is the mapped torch "
            "libraries.",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Plan:
    bulk: int
    singles: int
    queries: int
    encode_repeats: int
    http_seconds: float
    local_seconds: float
    max_requests: int
    scale_sizes: list[int]


BACKENDS = ("faiss", "milvus-lite", "milvus-server")


@contextmanager
def backend_settings(backend: str, data_dir: Path) -> Iterator[dict[str, str]]:
    """The server's ``METAH_*`` settings for ``backend`` (a Milvus server is started here, stopped on exit)."""
    if backend == "faiss":
        yield {}
    elif backend == "milvus-lite":
        yield {"METAH_INDEX_BACKEND": "milvus", "METAH_MILVUS_URI": str(data_dir / "milvus.db")}
    else:
        with standalone_server(data_dir / "milvus-server") as uri:
            yield {"METAH_INDEX_BACKEND": "milvus", "METAH_MILVUS_URI": uri}


def plan_of(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(200, 20, 20, 2, 1.5, 1.0, 2_000, [20_000])
    return Plan(
        args.bulk,
        args.singles,
        args.queries,
        args.encode_repeats,
        args.seconds,
        args.local_seconds,
        args.max_requests,
        [parse_size(s) for s in args.scale_sizes.split(",") if s],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="write OUT/results.json and OUT/results.md")
    parser.add_argument("--model-dir", type=Path, default=Path("var/demo-model"), help="demo model (trained if absent)")
    parser.add_argument("--work", type=Path, default=Path("var/bench-service"), help="server data dir and log")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few hundred images, ~1 s per level")
    parser.add_argument("--bulk", type=int, default=10_000, help="images in the ingest-job zip (USPS + MNIST-M)")
    parser.add_argument("--singles", type=int, default=300, help="single POST /v1/images uploads (MNIST)")
    parser.add_argument("--queries", type=int, default=300, help="single searches (USPS + MNIST-M, not stored)")
    parser.add_argument("--encode-repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrency level over HTTP")
    parser.add_argument("--local-seconds", type=float, default=4.0, help="per concurrency level in-process")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per concurrency level")
    parser.add_argument("--scale-sizes", default="100k,1M", help="in-process index sizes beyond the stored count")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker during bulk ingestion, then stop")
    parser.add_argument("--index-backend", choices=BACKENDS, default="faiss", help="the server's index backend")
    args = parser.parse_args(argv)
    plan = plan_of(args)
    wall = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "scripts.bench_service", *(sys.argv[1:] if argv is None else argv)]),
        "plan": plan.__dict__,
        "index_backend": args.index_backend,
    }
    model_path = ensure_demo_model(args.model_dir, "digits")
    encoder = load_encoder(model_path)
    results["model"] = f"{encoder.metadata['model_version']} ({encoder.metadata['backbone']}, {encoder.bits} bits)"
    settings = Settings.model_construct()  # the defaults metah serve runs with (the server gets no METAH_* tuning)
    max_pixels, batch_size = settings.max_pixels, settings.ingest_batch_size

    bulk, singles, queries = image_sets(plan.bulk, plan.singles, plan.queries)
    print(f"{len(bulk)} bulk, {len(singles)} single, {len(queries)} query images", flush=True)

    if not args.profile and args.index_backend == "faiss":
        print("1. encoding: artefact vs eager", flush=True)
        sweep_pixels = np.stack([decode(encoder, u.data, max_pixels) for u in bulk[: max(BATCH_SIZES)]])
        threads = sorted({1, available_cpus()})
        results["encoding"] = encoding_sweep(
            model_path, sweep_pixels, plan.encode_repeats, threads, BATCH_SIZES, images_per_timing=512
        )

    torch.set_num_threads(settings.torch_threads)  # the service's single-image setting, for every baseline below
    lanes = {"METAH_INGEST_WORKERS": "0"} if args.profile else {}  # --profile samples the one job worker
    args.work.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="data-", dir=args.work) as data_dir,
        backend_settings(args.index_backend, Path(data_dir)) as server_settings,
        metah_serve(Path(data_dir), model_path, 1, args.work / "serve.log", server_settings | lanes) as server,
    ):
        wait_for_worker(server)
        rss_before = server.memory()
        print("2. ingestion", flush=True)
        base = ingest_in_process(encoder, bulk, batch_size, max_pixels)
        if args.profile:
            profile_ingestion(server, bulk, args.out, base, results["command"])
            return
        job = ingest_job_over_http(server, bulk)
        rss_after = server.memory()
        print(f"  in-process {base['images_per_s']:.0f} img/s, job {job['images_per_s']:.0f} img/s", flush=True)
        single_base = singles_in_process(encoder, singles, max_pixels)
        single_http = single_uploads_over_http(server, singles)
        print(f"  singles {single_http['images_per_s']:.0f} img/s", flush=True)
        codes = np.concatenate([*base.pop("codes"), np.stack(single_base.pop("codes"))])
        domains = [u.domain for u in bulk] + [u.domain for u in singles]
        results["ingestion"] = {
            "batch_size": batch_size,
            "in_process": base,
            "job": job,
            "job_ratio": ratio(job["images_per_s"], base["images_per_s"]),
            "job_processing_ratio": ratio(job["images_per_s_job_processing"] or 0.0, base["images_per_s"]),
            "singles_in_process": single_base,
            "singles": single_http,
            "singles_ratio": ratio(single_http["images_per_s"], base["images_per_s"]),
            "singles_vs_single_in_process": ratio(single_http["images_per_s"], single_base["images_per_s"]),
        }
        stored = indexed(server)
        results["stored"] = stored
        if stored != len(codes):
            print(f"  WARNING: the server indexes {stored} images, this process encoded {len(codes)}", flush=True)

        print("3. single search", flush=True)
        version = str(encoder.metadata["model_version"])
        index = build_index(version, encoder.bits, np.arange(len(codes), dtype=np.int64), codes, domains)
        results["search"] = single_searches(server, encoder, index, queries, max_pixels)
        print(f"  {json.dumps(results['search'])}", flush=True)

        print("4. concurrency", flush=True)
        results["concurrency"] = []
        for clients in CLIENTS:
            row = load_test(http_caller(server, queries), clients, plan.http_seconds, plan.max_requests)
            results["concurrency"].append({"path": "http", "stored": stored, **row})
            print(f"  http {clients}: {row}", flush=True)
        rss_end = server.memory()
        created = job["result"]["created"]
        results["memory"] = {
            "ingested": created,
            "index_bytes_per_code": index.memory_bytes() / len(index),
            "api_rss_bytes_per_image": (rss_after["api"]["VmRSS"] - rss_before["api"]["VmRSS"]) * 1024 / created,
            "api_anon_bytes_per_image": (rss_after["api"]["RssAnon"] - rss_before["api"]["RssAnon"]) * 1024 / created,
            "snapshots": {"ready_empty": rss_before, "after_ingest": rss_after, "end_of_load_tests": rss_end},
        }

    results["scaled_indexes"] = []
    scale_sizes = plan.scale_sizes if args.index_backend == "faiss" else []
    for n, current in [(len(codes), index), *((n, None) for n in scale_sizes)]:
        if current is None:
            current, info = scaled_index(version, encoder.bits, codes, domains, n, seed=0)
            results["scaled_indexes"].append({"n": n, **info})
        for clients in CLIENTS:
            row = load_test(
                local_caller(encoder, current, queries, max_pixels), clients, plan.local_seconds, plan.max_requests
            )
            results["concurrency"].append({"path": "in-process", "stored": n, **row})
            print(f"  in-process {size_label(n)} {clients}: {row}", flush=True)
        del current

    results["targets"] = targets(results)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_seconds"] = time.perf_counter() - wall
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
