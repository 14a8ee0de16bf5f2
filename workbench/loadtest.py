"""The service benchmarks' pure parts, apart from servers and models: statistics, the stage timings scraped from
``/metrics``, real uploads as files (labels, domains, a zip with a manifest), the bounded load generator and the
targets the service benchmark judges. Tested by tests/test_bench_service.py.
"""

from __future__ import annotations

import io
import itertools
import mimetypes
import re
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100, linear interpolation) of ``samples``; NaN when there are none."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q)) if len(samples) else float("nan")


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Count, median, p99 and mean of latencies given in seconds, in milliseconds."""
    return {
        "count": len(seconds),
        "median_ms": percentile(seconds, 50) * 1e3,
        "p99_ms": percentile(seconds, 99) * 1e3,
        "mean_ms": float(np.mean(seconds)) * 1e3 if len(seconds) else float("nan"),
    }


def ratio(measured: float, baseline: float) -> float:
    """``measured / baseline`` (NaN when the baseline is 0)."""
    return measured / baseline if baseline else float("nan")


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


STAGE_LINE = re.compile(r'^metah_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)$')


def stage_totals(exposition: str) -> dict[str, dict[str, float]]:
    """``{stage: {"sum": s, "count": n}}`` from the Prometheus text of ``GET /metrics``."""
    out: dict[str, dict[str, float]] = {}
    for line in exposition.splitlines():
        if match := STAGE_LINE.match(line):
            kind, stage, value = match.groups()
            out.setdefault(stage, {})[kind] = float(value)
    return out


def stage_means_ms(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean milliseconds per observation of each stage between two scrapes."""
    means = {}
    for stage, totals in after.items():
        old = before.get(stage, {})
        count = totals.get("count", 0.0) - old.get("count", 0.0)
        if count > 0:
            means[stage] = (totals.get("sum", 0.0) - old.get("sum", 0.0)) / count * 1e3
    return means


@dataclass(frozen=True)
class Upload:
    """A real image file's bytes (a digit as PNG, a PACS JPEG), with its label, domain and file suffix."""

    data: bytes
    label: str
    domain: str
    suffix: str = ".png"

    @property
    def media_type(self) -> str:
        return mimetypes.guess_type(f"image{self.suffix}")[0] or "application/octet-stream"


def multipart_form(upload: Upload, boundary: str) -> bytes:
    """``upload`` as the ``image`` field of a ``multipart/form-data`` body, as a browser sends it to
    ``POST /v1/search`` (``boundary`` in the header)."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="query{upload.suffix}"\r\n'
        f"Content-Type: {upload.media_type}\r\n\r\n"
    )
    return head.encode() + upload.data + f"\r\n--{boundary}--\r\n".encode()


def interleave(*groups: list[Upload]) -> list[Upload]:
    return [u for row in itertools.zip_longest(*groups) for u in row if u is not None]


def folder_uploads(root: Path, domain: str) -> list[Upload]:
    """Every file of an ImageFolder ``root`` (one sub-folder per class), sorted by path, as ``domain``."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [Upload(p.read_bytes(), p.parent.name, domain, p.suffix.lower()) for p in files]


def photo_sets(root: Path, domains: Sequence[str], queries: int, seed: int) -> tuple[list[Upload], list[Upload]]:
    """Real photos from ``root/<domain>/<class>/…`` (the PACS subset in ``data/pacs``): a library of every file
    of ``domains`` but the queries, and ``queries`` of them drawn evenly across the domains (seeded), never
    stored. Both interleave the domains."""
    rng = np.random.default_rng(seed)
    library, held_out = [], []
    for i, domain in enumerate(domains):
        files = folder_uploads(root / domain, domain)
        share = queries // len(domains) + (i < queries % len(domains))
        picked = set(rng.choice(len(files), size=share, replace=False).tolist())
        held_out.append([u for j, u in enumerate(files) if j in picked])
        library.append([u for j, u in enumerate(files) if j not in picked])
    return interleave(*library), interleave(*held_out)


def zip_archive(uploads: Sequence[Upload]) -> bytes:
    """A zip of the images (stored: PNG and JPEG are compressed already) with ``manifest.csv`` (path, label,
    domain)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        lines = ["path,label,domain"]
        for i, upload in enumerate(uploads):
            name = f"{upload.domain}/{i:06d}{upload.suffix}"
            archive.writestr(name, upload.data)
            lines.append(f"{name},{upload.label},{upload.domain}")
        archive.writestr("manifest.csv", "\n".join(lines) + "\n")
    return buffer.getvalue()


Call = Callable[[int], bool]


def load_test(
    open_call: Callable[[], AbstractContextManager[Call]], clients: int, duration_s: float, max_requests: int
) -> dict[str, Any]:
    """``clients`` threads calling ``call(i)`` back to back until ``duration_s`` or ``max_requests`` in all.

    Returns QPS over the whole run, latency percentiles and the count of errors (``False`` or an exception).
    """
    samples: list[tuple[float, bool]] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = itertools.count()
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client() -> None:
        local: list[tuple[float, bool]] = []
        with open_call() as call:
            barrier.wait()
            while (i := next(counter)) < max_requests and time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                try:
                    ok = call(i)
                except Exception as exc:  # an error to count, not to stop on
                    ok = False
                    with lock:
                        failures.append(repr(exc))
                local.append((time.perf_counter() - t0, ok))
        with lock:
            samples.extend(local)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + duration_s
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies = [s for s, _ in samples]
    return {
        "clients": clients,
        "requests": len(samples),
        "seconds": elapsed,
        "qps": len(samples) / elapsed,
        **{f"latency_{k}": v for k, v in latency_summary(latencies).items() if k != "count"},
        "errors": sum(not ok for _, ok in samples),
        "first_failures": failures[:3],
    }


INGEST_RATIO_TARGET = 0.7
SEARCH_OVERHEAD_TARGET_MS = 1.5  # issue 13, the search path (was 5.0 in issue 6)


def identical_results(search: dict[str, Any]) -> str:
    """The target line: every search over HTTP found what the in-process search found, without an error."""
    mismatches, errors = search["distance_mismatches"], search["errors"]
    return (
        f"search results identical to in-process ({mismatches} mismatches, {errors} errors): "
        f"{verdict(mismatches == 0 and errors == 0)}"
    )


def targets(results: dict[str, Any]) -> list[str]:
    out = []
    if ing := results.get("ingestion"):
        value = ing["job_ratio"]
        out.append(
            f"bulk ingestion over HTTP {value:.2f}× the in-process decode+encode rate "
            f"(≥ {INGEST_RATIO_TARGET}×): {verdict(value >= INGEST_RATIO_TARGET)}"
        )
    if search := results.get("search"):
        value = search["median_overhead_ms"]
        client_ms = search["cpu_ms"]["client"]["median_ms"]
        if "median_overhead_plain_ms" in search:
            plain = search["median_overhead_plain_ms"]
            out.append(
                f"single search median overhead with a plain `http.client` client {plain:.2f} ms "
                f"(≤ {SEARCH_OVERHEAD_TARGET_MS} ms): {verdict(plain <= SEARCH_OVERHEAD_TARGET_MS)}"
            )
        out.append(
            f"single search median overhead with httpx {value:.2f} ms, the client's own CPU {client_ms:.2f} ms "
            f"of it (≤ {SEARCH_OVERHEAD_TARGET_MS} ms): {verdict(value <= SEARCH_OVERHEAD_TARGET_MS)}"
        )
        out.append(identical_results(search))
    if conc := results.get("concurrency"):
        errors = sum(r["errors"] for r in conc)
        out.append(f"errors under concurrent load {errors} (= 0): {verdict(errors == 0)}")
    return out
