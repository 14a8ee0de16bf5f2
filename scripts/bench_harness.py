"""The shared parts of the service benchmarks (``scripts/bench_service.py``, ``bench_search_resnet50.py``,
``bench_scale_http.py``): statistics, machine description, real uploads (digits, PACS photos), a real
``metah serve`` on loopback, encoding artefact vs eager, bulk ingestion and single searches over HTTP and
in-process, and the bounded load generator."""

from __future__ import annotations

import os

# libgomp reads this once when it loads (metah serve sets the same; see docs/index.md, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import http.client
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import torch

from index import HashIndex
from model.export import LoadedEncoder, load_encoder
from model.factory import restore_network
from model.preprocess import to_model_input
from scripts.run_demo import wait_ready
from service.pipeline import decode, decode_upload, encode, probe
from workbench.datasets import load_digits
from workbench.images import png_bytes
from workbench.loadtest import (
    Call,
    Upload,
    interleave,
    latency_summary,
    multipart_form,
    ratio,
    stage_means_ms,
    stage_totals,
    zip_archive,
)
from workbench.processes import children_of, free_port

REPO = Path(__file__).resolve().parents[1]
CLIENTS = (1, 8, 32)
K = 10


# ---------------------------------------------------------------------------------------------- helpers


MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile")


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS`` (resident), ``RssAnon`` (heap, private) and ``RssFile`` (mapped files: libraries, shared between
    processes through the page cache) of a process (Linux), in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in MEMORY_FIELDS:
            out[key] = int(value.split()[0])
    return out


def rss_kib(pid: int | str = "self") -> int:
    return memory_kib(pid)["VmRSS"]


def cpu_seconds(pid: int | str = "self", thread: int | None = None) -> float:
    """User + system CPU time a process has used so far, all its threads, or only ``thread`` (a thread id of
    the process; the main thread's is the process id) (Linux ``/proc``)."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def describe(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu']}, {machine['cpus_available']} CPUs; Python {machine['python']}, torch {machine['torch']}; "
        f"load average {machine['load_average_at_start']} at start"
    )


# ----------------------------------------------------------------------------------------------- images


def digit_uploads(domain: str, indices: Sequence[int], seen: set[bytes]) -> list[Upload]:
    """PNGs of ``data/digits`` images; bytes already in ``seen`` are skipped (the service would dedupe them)."""
    digits = load_digits(domain)
    out = []
    for i in indices:
        data = png_bytes(digits.images[i])
        if data not in seen:
            seen.add(data)
            out.append(Upload(data, str(int(digits.labels[i])), domain))
    return out


def image_sets(bulk: int, singles: int, queries: int) -> tuple[list[Upload], list[Upload], list[Upload]]:
    """Distinct real digits: the zip's (USPS + MNIST-M, as many MNIST-M as half the zip or all there are), the
    single uploads' (MNIST) and the queries' (the last USPS and MNIST-M images, never stored)."""
    seen: set[bytes] = set()
    usps, mnist_m = len(load_digits("usps")), len(load_digits("mnist_m"))
    q_usps = queries // 2
    query_sets = (
        digit_uploads("usps", range(usps - q_usps, usps), seen),
        digit_uploads("mnist_m", range(mnist_m - (queries - q_usps), mnist_m), seen),
    )
    colour = min(bulk // 2, mnist_m - (queries - q_usps))
    grey = min(bulk - colour, usps - q_usps)
    bulk_sets = (digit_uploads("usps", range(grey), seen), digit_uploads("mnist_m", range(colour), seen))
    return interleave(*bulk_sets), digit_uploads("mnist", range(singles), seen), interleave(*query_sets)


# ------------------------------------------------------------------------------- the metah serve process


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    client: httpx.Client
    api_key: str
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory(self) -> dict[str, dict[str, int]]:
        """:func:`memory_kib` of the API process (``api``) and of its job workers (``worker0``, …)."""
        out = {"api": memory_kib(self.pid)}
        for i, child in enumerate(children_of(self.pid)):
            out[f"worker{i}"] = memory_kib(child)
        return out


@contextmanager
def metah_serve(
    data_dir: Path,
    model: Path,
    workers: int,
    log_path: Path,
    settings: dict[str, str] | None = None,
    tree: Path = REPO,
) -> Iterator[Server]:
    """A real ``metah serve`` on loopback with a fresh data dir, logging to ``log_path``; SIGTERM and wait on
    exit. ``settings``: more environment variables (an index backend); ``tree``: the source tree it runs."""
    port, api_key = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAH_")}
    env.update(
        METAH_DATA_DIR=str(data_dir),
        METAH_MODEL=str(model.resolve()),
        METAH_HOST="127.0.0.1",
        METAH_PORT=str(port),
        METAH_WORKERS=str(workers),
        METAH_API_KEY=api_key,
    )
    env.update(settings or {})
    base_url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"], env=env, cwd=tree, stdout=log, stderr=log
        )
    try:
        with httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}, timeout=120) as client:
            try:
                wait_ready(client, process, timeout=120)
            except SystemExit as exc:  # the demo's wait reports by exiting; here it is one failure among many
                raise RuntimeError(f"{exc}: see {log_path}") from None
            yield Server(process, client, api_key, base_url, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_for_worker(server: Server) -> None:
    """The job worker starts after the API is ready: wait for its log line too."""
    log = server.log_path
    wait_for(lambda: b'"worker started"' in log.read_bytes(), timeout=120, what="the job worker", interval=0.2)


def indexed(server: Server) -> int:
    return int(server.client.get("/readyz").json()["indexed"])


# ------------------------------------------------------------------------------------- 1. encoding


def encoding_sweep(
    model_path: Path,
    pixels: np.ndarray,
    repeats: int,
    thread_counts: Sequence[int],
    batch_sizes: Sequence[int],
    images_per_timing: int,
) -> list[dict[str, Any]]:
    """Images/s of the eager network (rebuilt from the ``checkpoint.pt`` beside the artefact) vs the exported
    artefact, same batch: each timing covers at least ``images_per_timing`` images, the two alternate, the first
    round warms up, the median of the other ``repeats`` counts.

    Shape:
        pixels: uint8 ``[M, H, W, 3]`` at the encoder's input size, ``M ≥ max(batch_sizes)``.
    """
    artefact = load_encoder(model_path).module
    eager = restore_network(model_path.with_name("checkpoint.pt")).net.encoder().eval()
    rows = []
    default_threads = torch.get_num_threads()
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for batch_size in batch_sizes:
            batch = to_model_input(pixels[:batch_size])
            loops = max(1, images_per_timing // batch_size)
            timings: dict[str, list[float]] = {"eager": [], "artefact": []}
            with torch.inference_mode():
                same = torch.equal(eager(batch) > 0, artefact(batch) > 0)
                for _ in range(repeats + 1):  # the first round warms up
                    for name, module in (("eager", eager), ("artefact", artefact)):
                        started = time.perf_counter()
                        for _ in range(loops):
                            module(batch)
                        timings[name].append(time.perf_counter() - started)
            eager_rate = loops * batch_size / float(np.median(timings["eager"][1:]))
            artefact_rate = loops * batch_size / float(np.median(timings["artefact"][1:]))
            rows.append(
                {
                    "threads": threads,
                    "batch": batch_size,
                    "eager_images_per_s": eager_rate,
                    "artefact_images_per_s": artefact_rate,
                    "ratio": ratio(artefact_rate, eager_rate),
                    "same_bits": bool(same),
                }
            )
            print(f"  encode threads={threads} batch={batch_size}: {rows[-1]}", flush=True)
    torch.set_num_threads(default_threads)
    return rows


# ------------------------------------------------------------------------------------ 2. ingestion


def ingest_in_process(
    encoder: LoadedEncoder, uploads: Sequence[Upload], batch_size: int, max_pixels: int
) -> dict[str, Any]:
    """probe → decode per image, encode per batch; returns the rate, this process's CPU seconds and the codes
    (``uint8 [N, B]``)."""
    cpu = cpu_seconds()
    started = time.perf_counter()
    parts = []
    for start in range(0, len(uploads), batch_size):
        pixels = []
        for upload in uploads[start : start + batch_size]:
            probe(upload.data, max_pixels)
            pixels.append(decode(encoder, upload.data, max_pixels))
        parts.append(encode(encoder, np.stack(pixels)))
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    return {
        "images": len(uploads),
        "seconds": seconds,
        "images_per_s": len(uploads) / seconds,
        "cpu_s": cpu,
        "codes": parts,
    }


def ingest_job_over_http(server: Server, uploads: Sequence[Upload]) -> dict[str, Any]:
    """Send one zip to ``POST /v1/ingest-jobs``; time until the job has succeeded and until the API's index
    holds the images (``/readyz`` ``indexed``), and the CPU seconds the API and the job worker used meanwhile.

    The job is polled every 0.2 s: a client polling faster takes CPU from the worker on a small machine."""
    archive = zip_archive(uploads)
    before = indexed(server)
    processes = {"api": server.pid, **{f"worker{i}": pid for i, pid in enumerate(children_of(server.pid))}}
    cpu = {name: cpu_seconds(pid) for name, pid in processes.items()}
    started = time.perf_counter()
    response = server.client.post(
        "/v1/ingest-jobs",
        files={"archive": ("images.zip", archive, "application/zip")},
        data={"domain": uploads[0].domain},  # the fallback: the manifest names every image's domain
    )
    response.raise_for_status()
    accepted = time.perf_counter() - started
    job_id = response.json()["job_id"]
    job: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal job
        job = server.client.get(f"/v1/jobs/{job_id}").json()
        return job["status"] in ("succeeded", "failed", "cancelled")

    wait_for(finished, timeout=1800, what=f"ingest job {job_id}", interval=0.2)
    succeeded = time.perf_counter() - started
    cpu = {name: cpu_seconds(pid) - cpu[name] for name, pid in processes.items()}
    if job["status"] != "succeeded":
        raise RuntimeError(f"ingest job {job_id} ended {job['status']}: {job['errors'][:5]}")
    created = int(job["result"]["created"])
    wait_for(lambda: indexed(server) >= before + created, timeout=300, what="the API index to follow the job")
    in_index = time.perf_counter() - started
    created_at, started_at, finished_at = (
        datetime.fromisoformat(job[key]) if job.get(key) else None
        for key in ("created_at", "started_at", "finished_at")
    )
    processing = (finished_at - started_at).total_seconds() if started_at and finished_at else None
    queued = (started_at - created_at).total_seconds() if created_at and started_at else None
    return {
        "images": len(uploads),
        "archive_bytes": len(archive),
        "result": job["result"],
        "item_errors": len(job["errors"]),
        "upload_accepted_s": accepted,
        "succeeded_s": succeeded,
        "in_api_index_s": in_index,
        "job_queued_s": queued,
        "job_processing_s": processing,
        "images_per_s": created / succeeded,
        "images_per_s_job_processing": created / processing if processing else None,
        "cpu_s": cpu,
    }


# --------------------------------------------------------------------------------------- 3. search


def search_in_process(encoder: LoadedEncoder, index: HashIndex, data: bytes, max_pixels: int) -> list[int]:
    """The search route's CPU work without HTTP or the database: probe + decode (one parse) → encode → index
    search."""
    code = encode(encoder, decode_upload(encoder, data, max_pixels)[None])[0]
    hits = index.search(code, K, model_version=index.model_version)[0]
    return [int(d) for d in hits.distances]


def search_over_http(client: httpx.Client, query: Upload) -> httpx.Response:
    image = (f"query{query.suffix}", query.data, query.media_type)
    return client.post("/v1/search", files={"image": image}, params={"k": K})


class PlainHttp:
    """A minimal keep-alive HTTP/1.1 client (the standard library's ``http.client``, the multipart body written
    out): the service's latency without most of the client's own CPU time, which httpx spends on these same
    two cores (``cpu_ms["client"]``; this client's is ``cpu_ms["plain_client"]``)."""

    BOUNDARY = "metah-bench-boundary"

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)

    def search(self, query: Upload) -> tuple[int, bytes]:
        body = multipart_form(query, self.BOUNDARY)
        headers = {"Content-Type": f"multipart/form-data; boundary={self.BOUNDARY}"}
        return self.request("POST", f"/v1/search?k={K}", body, headers)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        self.connection.request(method, path, body, headers or {})
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.connection.close()


# ---------------------------------------------------------------------------------- 4. concurrency


def http_caller(server: Server, queries: Sequence[Upload]) -> Callable[[], AbstractContextManager[Call]]:
    @contextmanager
    def open_call() -> Iterator[Call]:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            yield lambda i: search_over_http(client, queries[i % len(queries)]).status_code == 200

    return open_call


def local_caller(
    encoder: LoadedEncoder, index: HashIndex, queries: Sequence[Upload], max_pixels: int
) -> Callable[[], AbstractContextManager[Call]]:
    @contextmanager
    def open_call() -> Iterator[Call]:
        yield lambda i: len(search_in_process(encoder, index, queries[i % len(queries)].data, max_pixels)) > 0

    return open_call


def build_index(model_version: str, bits: int, ids: np.ndarray, codes: np.ndarray, domains: Sequence[str]) -> HashIndex:
    domain_array = np.asarray(domains)
    batches = [(ids[domain_array == d], codes[domain_array == d], str(d)) for d in sorted(set(domains))]
    return HashIndex.build_from_batches(batches, bits=bits, model_version=model_version)


def scaled_index(
    model_version: str, bits: int, codes: np.ndarray, domains: Sequence[str], n: int, seed: int
) -> tuple[HashIndex, dict[str, float]]:
    """``n`` (code, domain) pairs drawn with replacement from the real stored ones; build time and memory."""
    pick = np.random.default_rng(seed).integers(0, len(codes), size=n)
    rss = rss_kib()
    started = time.perf_counter()
    index = build_index(
        model_version, bits, np.arange(n, dtype=np.int64), codes[pick], np.asarray(domains)[pick].tolist()
    )
    info = {
        "build_s": time.perf_counter() - started,
        "index_bytes_per_code": index.memory_bytes() / n,
        "rss_bytes_per_code": (rss_kib() - rss) * 1024 / n,
    }
    return index, info


def single_uploads_over_http(server: Server, uploads: Sequence[Upload]) -> dict[str, Any]:
    """``POST /v1/images`` one after another; all must be 201."""
    latencies, statuses = [], []
    started = time.perf_counter()
    for upload in uploads:
        t0 = time.perf_counter()
        response = server.client.post(
            "/v1/images",
            files={"image": (f"image{upload.suffix}", upload.data, upload.media_type)},
            data={"domain": upload.domain, "label": upload.label},
        )
        latencies.append(time.perf_counter() - t0)
        statuses.append(response.status_code)
    seconds = time.perf_counter() - started
    return {
        "images": len(uploads),
        "seconds": seconds,
        "images_per_s": len(uploads) / seconds,
        "created": statuses.count(201),
        "errors": sum(s >= 400 for s in statuses),
        "latency": latency_summary(latencies),
    }


def single_searches(
    server: Server, encoder: LoadedEncoder, index: HashIndex, queries: Sequence[Upload], max_pixels: int
) -> dict[str, Any]:
    """Each query over HTTP then in-process, interleaved; the distance lists must agree.

    Also the CPU time of each side (``cpu_ms``): the client's thread and the server process during the HTTP
    search, this thread during the in-process one. Wall time beyond the CPU time is waiting: for the other
    process, for a core."""
    plain = PlainHttp(server.base_url)
    for query in queries[:5]:  # warm-up
        search_over_http(server.client, query)
        plain.search(query)
        search_in_process(encoder, index, query.data, max_pixels)
    scrape_before = stage_totals(server.client.get("/metrics").text)
    http, local, mismatches, errors, took, noop = [], [], 0, 0, [], []
    plain_http, plain_noop = [], []
    cpu: dict[str, list[float]] = {"client": [], "server": [], "in_process": [], "plain_client": []}
    for query in queries:
        t0, c0, s0 = time.perf_counter(), time.thread_time(), cpu_seconds(server.pid)
        response = search_over_http(server.client, query)
        http.append(time.perf_counter() - t0)
        cpu["server"].append(cpu_seconds(server.pid) - s0)
        cpu["client"].append(time.thread_time() - c0)
        t0, c0 = time.perf_counter(), time.thread_time()
        expected = search_in_process(encoder, index, query.data, max_pixels)
        local.append(time.perf_counter() - t0)
        cpu["in_process"].append(time.thread_time() - c0)
        t0 = time.perf_counter()
        server.client.get("/healthz")  # the floor: a route that does nothing, same connection
        noop.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.thread_time()
        status, plain_body = plain.search(query)
        plain_http.append(time.perf_counter() - t0)
        cpu["plain_client"].append(time.thread_time() - c0)
        t0 = time.perf_counter()
        plain.request("GET", "/healthz")
        plain_noop.append(time.perf_counter() - t0)
        if response.status_code != 200 or status != 200:
            errors += 1
            continue
        body = response.json()
        took.append(body["took_ms"] / 1e3)
        mismatches += [hit["distance"] for hit in body["hits"]] != expected
        mismatches += [hit["distance"] for hit in json.loads(plain_body)["hits"]] != expected
    plain.close()
    scrape_after = stage_totals(server.client.get("/metrics").text)
    out: dict[str, Any] = {
        "queries": len(queries),
        "http": latency_summary(http),
        "in_process": latency_summary(local),
        "server_took_ms": latency_summary(took),
        "healthz": latency_summary(noop),
        "http_plain": latency_summary(plain_http),
        "healthz_plain": latency_summary(plain_noop),
        "server_stage_mean_ms": stage_means_ms(scrape_before, scrape_after),
        "cpu_ms": {side: latency_summary(seconds) for side, seconds in cpu.items()},
        "errors": errors,
        "distance_mismatches": mismatches,
    }
    out["median_overhead_ms"] = out["http"]["median_ms"] - out["in_process"]["median_ms"]
    out["p99_overhead_ms"] = out["http"]["p99_ms"] - out["in_process"]["p99_ms"]
    out["median_overhead_plain_ms"] = out["http_plain"]["median_ms"] - out["in_process"]["median_ms"]
    return out


def single_search_table(search: dict[str, Any], title: str, in_process: str, decimals: int) -> list[str]:
    """The "single search" section's heading and latency table (in-process, HTTP, the server's ``took_ms``,
    ``/healthz``), as both service benchmarks report it; ``in_process`` names the in-process path."""
    rows = (
        (in_process, search["in_process"]),
        ("`POST /v1/search` (client wall time)", search["http"]),
        ("… the server's own `took_ms` (the route's function)", search["server_took_ms"]),
        ("`GET /healthz` (a route doing nothing: HTTP + framework floor)", search["healthz"]),
        ("`POST /v1/search`, plain `http.client` client (client wall time)", search["http_plain"]),
        ("`GET /healthz`, plain `http.client` client", search["healthz_plain"]),
    )
    cells = ("median_ms", "p99_ms", "mean_ms")
    return [
        "",
        title,
        "",
        "| path | median ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|",
        *[f"| {name} | " + " | ".join(f"{s[c]:.{decimals}f}" for c in cells) + " |" for name, s in rows],
        "",
    ]
