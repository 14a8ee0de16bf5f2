"""Benchmark ``index/``: exact and approximate Hamming search, memory, build, snapshots, vs a numpy baseline.

For every size × bit length: build a :class:`~index.HashIndex` (one domain), then measure single-query
latency (one OpenMP thread) and batch QPS (all threads) for k=10 and k=100, memory per code, build time,
the same queries through numpy (``np.bitwise_count`` on XORed codes + ``argpartition``), an IVF index
(recall@10, tie-aware, per ``nprobe``) and snapshot save/load times. Design experiments behind the choices in
``index/``: ``--filter`` (one index per domain vs an ID selector) and ``--approx-compare`` (IVF vs HNSW).

Codes: ``--codes FILE`` takes a ``.npy`` of encoder output (±1 or real, ``[N, bits]``) or packed codes
(``uint8 [N, bits/8]``); the last ``--queries`` rows are the queries. Without it, class-clustered synthetic
codes (:func:`index.synthetic.clustered_codes`: 10 prototypes, 5–15 % bit flips).

    nice -n 19 .venv/bin/python scripts/bench_index.py --sizes 100k,1M --bits 64,128 --out benchmarks/index/dev
    nice -n 19 .venv/bin/python scripts/bench_index.py --design --out benchmarks/index/design

Results: ``OUT.json`` (every number, machine, date, command) and ``OUT.md`` (the tables in docs/index.md).
"""

from __future__ import annotations

import os

# libgomp reads this once when it loads; with the default (spinning) policy, multi-threaded FAISS calls on a
# machine whose other cores are busy wait a scheduler tick per barrier (docs/index.md, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import ctypes
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from index import HashIndex, IndexOptions, pack_codes
from index.codes import Codes, check_codes
from index.synthetic import clustered_codes
from index.threads import available_cpus, omp_threads
from workbench.machine import machine
from workbench.output import write_results
from workbench.sizes import parse_size, size_label

SYNTHETIC = "synthetic class-clustered codes: 10 prototypes, per-(class, bit) flip rate uniform in 5-15 %"


# ---------------------------------------------------------------------------------------------- helpers


def rss_bytes() -> int:
    """Resident set size of this process (Linux), after returning freed heap memory to the OS."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    into[key] = time.perf_counter() - start


def latencies(run: Callable[[int], object], count: int) -> dict[str, float]:
    """Median and p90 milliseconds of ``run(i)`` for ``i < count`` (after one warm-up call)."""
    run(0)
    samples = []
    for i in range(count):
        start = time.perf_counter()
        run(i)
        samples.append(time.perf_counter() - start)
    return {"median_ms": float(np.median(samples) * 1e3), "p90_ms": float(np.percentile(samples, 90) * 1e3)}


def searcher(index: HashIndex, queries: Codes, k: int, **kwargs: Any) -> Callable[[int], object]:
    """``i -> index.search(queries[i % Q], k, **kwargs)``: one single-query search."""

    def run(i: int) -> object:
        return index.search(queries[i % len(queries)], k, **kwargs)

    return run


def faiss_searcher(index: Any, queries: Codes, k: int, params: Any = None) -> Callable[[int], object]:
    """``i -> index.search(queries[i : i + 1], k)`` on a raw FAISS index, with optional search parameters."""

    def run(i: int) -> object:
        query = queries[i % len(queries) : i % len(queries) + 1]
        return index.search(query, k) if params is None else index.search(query, k, params=params)

    return run


def numpy_searcher(database: npt.NDArray[Any], queries: npt.NDArray[Any], k: int) -> Callable[[int], object]:
    def run(i: int) -> object:
        return numpy_knn(database, queries[i % len(queries)], k)

    return run


def numpy_knn(database: npt.NDArray[Any], query: npt.NDArray[Any], k: int) -> npt.NDArray[np.intp]:
    """The baseline: XOR, ``np.bitwise_count``, ``argpartition``, sort the k. ``database`` is uint64 [N, w]."""
    counts = np.bitwise_count(np.bitwise_xor(database, query))
    distances = counts[:, 0] if counts.shape[1] == 1 else counts.sum(axis=1, dtype=np.uint16)
    top = np.argpartition(distances, k)[:k]
    return top[np.argsort(distances[top], kind="stable")]


def tie_aware_recall(found: npt.NDArray[np.int32], exact_kth: npt.NDArray[np.int32], k: int) -> float:
    """Share of the returned hits no farther than the true k-th distance (any tied code counts as right)."""
    return float(np.mean((found[:, :k] <= exact_kth[:, None]).sum(axis=1) / k))


def hits_matrix(hits: list[Any], k: int) -> npt.NDArray[np.int32]:
    out = np.full((len(hits), k), np.iinfo(np.int32).max, np.int32)
    for i, h in enumerate(hits):
        out[i, : len(h)] = h.distances[:k]
    return out


# ------------------------------------------------------------------------------------------------ codes


@dataclass
class CodeSet:
    """Database codes ``[N, B]`` and held-out queries ``[Q, B]`` of one bit length."""

    bits: int
    database: Codes
    queries: Codes
    source: str


def load_codes(path: Path, queries: int) -> CodeSet:
    """A ``.npy`` of encoder output (``[N, bits]``, real) or packed codes (``uint8 [N, bits/8]``)."""
    array = np.load(path, mmap_mode="r")
    if array.dtype == np.uint8 and array.ndim == 2 and not np.isin(array[: min(1000, len(array))], (0, 1)).all():
        bits = array.shape[1] * 8
        packed = check_codes(np.asarray(array), bits)
    else:
        bits = array.shape[1]
        packed = pack_codes(np.asarray(array), bits)
    return CodeSet(bits, packed[:-queries], packed[-queries:], f"file {path} ({len(packed)} codes)")


def synthetic_codes(n: int, bits: int, queries: int, seed: int) -> CodeSet:
    codes, _ = clustered_codes(n + queries, bits, seed=seed)
    return CodeSet(bits, codes[:n], codes[n:], SYNTHETIC)


# ------------------------------------------------------------------------------------------------ stages


@dataclass
class Settings:
    queries: int
    batch: int
    nprobes: list[int]
    nlist: int | None
    workdir: Path
    numpy_queries: int
    skip_ivf: bool = False
    threads: int = field(default_factory=available_cpus)


def bench_flat(codes: CodeSet, n: int, settings: Settings) -> tuple[dict[str, Any], npt.NDArray[np.int32]]:
    """Exact index: build, memory, latency, QPS, numpy baseline, snapshot. Returns the row and exact
    10th distances of the queries (for recall)."""
    database, queries, bits = codes.database[:n], codes.queries, codes.bits
    ids = np.arange(n, dtype=np.int64)
    row: dict[str, Any] = {"n": n, "bits": bits, "kind": "flat"}
    options = IndexOptions(flat_max=n, batch_threads=settings.threads)
    rss = rss_bytes()
    with timed(row, "build_s"):
        index = HashIndex.build_from_batches(
            [(ids, database, "database")], bits=bits, model_version="bench", options=options
        )
    raw = n * bits // 8
    row["memory_bytes_per_code"] = index.memory_bytes() / n
    row["rss_bytes_per_code"] = (rss_bytes() - rss) / n
    row["memory_vs_raw"] = index.memory_bytes() / raw
    count = settings.queries if n <= 2_000_000 else max(20, settings.queries // 4)
    batch = queries[: settings.batch if n <= 2_000_000 else settings.batch // 4]
    exact_kth = np.empty(0, np.int32)
    for k in (10, 100):
        row[f"single_k{k}"] = latencies(searcher(index, queries, k), count)
        start = time.perf_counter()
        hits = index.search(batch, k)
        row[f"batch_qps_k{k}"] = len(batch) / (time.perf_counter() - start)
        if k == 10:
            exact_kth = hits_matrix(hits, 10)[:, 9]
    width = 8 if bits % 64 == 0 else 1
    database_words = database.view(np.uint64) if width == 8 else database
    query_words = queries.view(np.uint64) if width == 8 else queries
    numpy_count = settings.numpy_queries if n <= 2_000_000 else max(5, settings.numpy_queries // 5)
    for k in (10, 100):
        row[f"numpy_k{k}"] = latencies(numpy_searcher(database_words, query_words, k), numpy_count)
        row[f"speedup_vs_numpy_k{k}"] = row[f"numpy_k{k}"]["median_ms"] / row[f"single_k{k}"]["median_ms"]
    row.update(bench_snapshot(index, settings.workdir / f"flat-{n}-{bits}.snap"))
    if n <= 1_000_000:  # the rebuild path: one Python tuple per database row
        rows = ((i, database[i].tobytes(), "database") for i in range(n))
        with timed(row, "rebuild_from_rows_s"):
            HashIndex.build(rows, bits=bits, model_version="bench", options=options)
    return row, exact_kth


def bench_snapshot(index: HashIndex, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with timed(out, "save_s"):
        index.save(path)
    out["snapshot_bytes"] = path.stat().st_size
    with timed(out, "load_s"):
        loaded = HashIndex.load(path, options=index.options)
    with timed(out, "load_unverified_s"):
        HashIndex.load(path, options=index.options, verify=False)
    query = np.zeros(index.bits // 8, np.uint8)
    with timed(out, "first_search_after_load_s"):
        loaded.search(query, 10)
    path.unlink()
    return out


def bench_ivf(
    codes: CodeSet, n: int, exact_kth: npt.NDArray[np.int32], flat: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """Approximate index (IVF) on the same codes: build, recall@10 and speed per nprobe, snapshot."""
    database, queries, bits = codes.database[:n], codes.queries, codes.bits
    row: dict[str, Any] = {"n": n, "bits": bits, "kind": "ivf"}
    options = IndexOptions(flat_max=0, nlist=settings.nlist, nprobe=settings.nprobes[0], batch_threads=settings.threads)
    rss = rss_bytes()
    with timed(row, "build_s"):
        index = HashIndex.build_from_batches(
            [(np.arange(n, dtype=np.int64), database, "database")], bits=bits, model_version="bench", options=options
        )
    row["memory_bytes_per_code"] = index.memory_bytes() / n
    row["rss_bytes_per_code"] = (rss_bytes() - rss) / n
    with index.locked_state() as state:
        row["nlist"] = getattr(state.shards["database"], "nlist", None)
    count = settings.queries if n <= 2_000_000 else max(50, settings.queries // 2)
    batch = queries[: settings.batch]
    row["per_nprobe"] = []
    for nprobe in settings.nprobes:
        index.set_nprobe(nprobe)
        measured: dict[str, Any] = {"nprobe": nprobe}
        hits = index.search(queries[: len(exact_kth)], 10)
        measured["recall_at_10"] = tie_aware_recall(hits_matrix(hits, 10), exact_kth, 10)
        measured["single_k10"] = latencies(searcher(index, queries, 10), count)
        start = time.perf_counter()
        index.search(batch, 10)
        measured["batch_qps_k10"] = len(batch) / (time.perf_counter() - start)
        measured["speedup_vs_flat_single"] = flat["single_k10"]["median_ms"] / measured["single_k10"]["median_ms"]
        measured["speedup_vs_flat_batch"] = measured["batch_qps_k10"] / flat["batch_qps_k10"]
        row["per_nprobe"].append(measured)
        print(f"    ivf nprobe {nprobe}: {measured}", flush=True)
    row.update(bench_snapshot(index, settings.workdir / f"ivf-{n}-{bits}.snap"))
    return row


# ------------------------------------------------------------------------------------- design experiments


def bench_filter(n: int, bits: int, domain_size: int, queries: int, seed: int) -> dict[str, Any]:
    """A small domain inside a large index: one index per domain vs ``IDSelector``s on one index."""
    codes = synthetic_codes(n, bits, queries, seed)
    database, query = codes.database, codes.queries
    rng = np.random.default_rng(seed)
    in_domain = np.zeros(n, bool)
    in_domain[rng.choice(n, size=domain_size, replace=False)] = True
    ids = np.arange(n, dtype=np.int64)
    out: dict[str, Any] = {"n": n, "bits": bits, "domain_size": domain_size}
    sharded = HashIndex.build_from_batches(
        [(ids[~in_domain], database[~in_domain], "big"), (ids[in_domain], database[in_domain], "small")],
        bits=bits,
        model_version="bench",
        options=IndexOptions(flat_max=n),
    )
    out["per_domain_index_ms"] = latencies(searcher(sharded, query, 10, domain="small"), queries)
    out["per_domain_unfiltered_ms"] = latencies(searcher(sharded, query, 10), queries)
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(database)
    bitmap = np.packbits(in_domain, bitorder="little")
    selectors = {
        "selector_bitmap_ms": faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap)),  # bitmap outlives it
        "selector_batch_ms": faiss.IDSelectorBatch(np.flatnonzero(in_domain).astype(np.int64)),
    }
    with omp_threads(1):
        out["one_index_unfiltered_ms"] = latencies(faiss_searcher(flat, query, 10), queries)
        for name, selector in selectors.items():
            params = faiss.SearchParameters()
            params.sel = selector
            out[name] = latencies(faiss_searcher(flat, query, 10, params), queries)
            _, found = flat.search(query[:5], 10, params=params)
            assert (found >= 0).all(), "a filtered search must still return k hits"
            assert in_domain[found].all(), "a filtered search returned codes outside the domain"
    out["idmap2"] = bench_idmap2(database)
    return out


def bench_idmap2(database: Codes) -> dict[str, Any]:
    """Memory and costs of ``IndexBinaryIDMap2(IndexBinaryFlat)``, the layout the issue suggested."""
    n, bits = database.shape[0], database.shape[1] * 8
    ids = np.arange(n, dtype=np.int64) * 3
    out: dict[str, Any] = {}
    rss = rss_bytes()
    index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
    with timed(out, "build_s"):
        index.add_with_ids(database, ids)
    out["rss_bytes_per_code"] = (rss_bytes() - rss) / n
    with timed(out, "remove_one_s"):
        index.remove_ids(faiss.IDSelectorBatch(ids[:1]))
    blob = faiss.serialize_index_binary(index)
    with timed(out, "deserialize_s"):
        faiss.deserialize_index_binary(blob)
    ours = HashIndex.build_from_batches(
        [(ids, database, "d")], bits=bits, model_version="bench", options=IndexOptions(flat_max=n)
    )
    with timed(out, "ours_remove_one_s"):
        ours.remove(ids[:1])
    out["ours_memory_bytes_per_code"] = ours.memory_bytes() / n
    return out


def bench_approx_compare(codes: CodeSet, n: int, queries: int, seed: int) -> dict[str, Any]:
    """IVF vs HNSW on the first ``n`` codes of ``codes``: build time, tie-aware recall@10 and single-query
    latency for the first ``queries`` queries."""
    bits = codes.bits
    database, query = codes.database[:n], codes.queries[:queries]
    flat = faiss.IndexBinaryFlat(bits)
    flat.add(database)
    exact, _ = flat.search(query, 10)
    kth = exact[:, 9]
    out: dict[str, Any] = {"n": n, "bits": bits, "codes": codes.source, "ivf": [], "hnsw": []}

    def measure(index: Any, params: Any) -> dict[str, float]:
        found, _ = index.search(query, 10, params=params) if params is not None else index.search(query, 10)
        with omp_threads(1):
            lat = latencies(faiss_searcher(index, query, 10, params), queries)
        return {"recall_at_10": tie_aware_recall(found, kth, 10), **lat}

    for nlist in (256, 1024):
        timing: dict[str, float] = {}
        ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
        sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False)
        with timed(timing, "train_s"):
            ivf.train(database[np.sort(sample)])
        with timed(timing, "add_s"):
            ivf.add(database)
        for nprobe in (1, 2, 4, 8, 16, 32):
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
            out["ivf"].append({"nlist": nlist, "nprobe": nprobe, **timing, **measure(ivf, params)})
            print("   ", out["ivf"][-1], flush=True)
    for m in (16, 32):
        timing = {}
        hnsw = faiss.IndexBinaryHNSW(bits, m)
        hnsw.hnsw.efConstruction = 40
        with timed(timing, "build_s"):
            hnsw.add(database)
        for ef in (16, 32, 64, 128, 256):
            hnsw.hnsw.efSearch = ef
            out["hnsw"].append({"M": m, "efSearch": ef, **timing, **measure(hnsw, None)})
            print("   ", out["hnsw"][-1], flush=True)
    return out


# ---------------------------------------------------------------------------------------------- reports


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']['cpu']}, {results['machine']['cpus_available']} CPUs, "
        f"{results['machine']['memory_gib']} GiB; faiss {results['machine']['faiss']}, numpy "
        f"{results['machine']['numpy']}; OMP_WAIT_POLICY={results['machine']['omp_wait_policy']}; load average "
        f"{results['machine']['load_average_at_start']} at start, {results.get('load_average_at_end')} at end.",
        f"Date: {results['date']}. Codes: {results['codes']}.",
        f"Command: `{results['command']}`",
        "",
    ]
    flat = [r for r in results["rows"] if r["kind"] == "flat"]
    if flat:
        lines += [
            "| codes | bits | build s | bytes/code (RSS) | × raw | single k=10 ms (p90) | single k=100 ms | "
            "batch QPS k=10 | batch QPS k=100 | numpy k=10 ms | × numpy | save s | load s (unverified) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in flat:
            lines.append(
                f"| {size_label(r['n'])} | {r['bits']} | {r['build_s']:.2f} | {r['memory_bytes_per_code']:.0f} "
                f"({r['rss_bytes_per_code']:.1f}) | {r['memory_vs_raw']:.2f} | {r['single_k10']['median_ms']:.3f} "
                f"({r['single_k10']['p90_ms']:.3f}) | {r['single_k100']['median_ms']:.3f} | "
                f"{r['batch_qps_k10']:.0f} | {r['batch_qps_k100']:.0f} | {r['numpy_k10']['median_ms']:.2f} | "
                f"{r['speedup_vs_numpy_k10']:.1f} | {r['save_s']:.2f} | {r['load_s']:.2f} "
                f"({r['load_unverified_s']:.3f}) |"
            )
    ivf = [r for r in results["rows"] if r["kind"] == "ivf"]
    if ivf:
        lines += [
            "",
            "| codes | bits | nlist | build s | bytes/code | nprobe | recall@10 | single ms (p90) | × flat single | "
            "batch QPS | × flat batch | load s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ivf:
            for p in r["per_nprobe"]:
                lines.append(
                    f"| {size_label(r['n'])} | {r['bits']} | {r['nlist']} | {r['build_s']:.1f} | "
                    f"{r['memory_bytes_per_code']:.0f} | {p['nprobe']} | {p['recall_at_10']:.4f} | "
                    f"{p['single_k10']['median_ms']:.3f} ({p['single_k10']['p90_ms']:.3f}) | "
                    f"{p['speedup_vs_flat_single']:.1f} | {p['batch_qps_k10']:.0f} | "
                    f"{p['speedup_vs_flat_batch']:.1f} | {r['load_s']:.2f} |"
                )
    if "filter" in results:
        f = results["filter"]
        lines += [
            "",
            f"Filtered search, {size_label(f['n'])} {f['bits']}-bit codes, domain of {f['domain_size']}, k=10, "
            "one thread (median ms): "
            f"per-domain index {f['per_domain_index_ms']['median_ms']:.3f}; "
            f"one index + IDSelectorBitmap {f['selector_bitmap_ms']['median_ms']:.3f}; "
            f"+ IDSelectorBatch {f['selector_batch_ms']['median_ms']:.3f}; "
            f"unfiltered one index {f['one_index_unfiltered_ms']['median_ms']:.3f}, "
            f"unfiltered over both domain shards {f['per_domain_unfiltered_ms']['median_ms']:.3f}.",
            f"IndexBinaryIDMap2: {f['idmap2']}",
        ]
    if "approx_compare" in results:
        a = results["approx_compare"]
        lines += [
            "",
            f"IVF vs HNSW, {size_label(a['n'])} {a['bits']}-bit codes, k=10, one thread:",
            "",
            "| index | parameters | build s | recall@10 | single ms |",
            "|---|---|---|---|---|",
        ]
        for r in a["ivf"]:
            lines.append(
                f"| IVF | nlist {r['nlist']}, nprobe {r['nprobe']} | {r['train_s'] + r['add_s']:.1f} | "
                f"{r['recall_at_10']:.4f} | {r['median_ms']:.3f} |"
            )
        for r in a["hnsw"]:
            lines.append(
                f"| HNSW | M {r['M']}, efSearch {r['efSearch']} | {r['build_s']:.1f} | "
                f"{r['recall_at_10']:.4f} | {r['median_ms']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100k,1M", help="database sizes, e.g. 100k,1M,10M (empty: none)")
    parser.add_argument("--bits", default="64,128", help="code lengths (ignored with --codes)")
    parser.add_argument("--codes", type=Path, help=".npy of encoder output [N, bits] or packed uint8 codes")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per setting")
    parser.add_argument("--batch", type=int, default=1000, help="queries per batch (QPS)")
    parser.add_argument("--nprobe", default="8,16,32", help="IVF nprobe values; the first is also the build's")
    parser.add_argument("--nlist", type=int, help="IVF lists (default: index.approximate.default_nlist)")
    parser.add_argument("--ivf-min", default="1M", help="run the IVF stage from this size up")
    parser.add_argument("--design", action="store_true", help="also --filter and --approx-compare at 1M 64-bit")
    parser.add_argument("--filter", action="store_true", help="per-domain index vs ID selectors")
    parser.add_argument("--approx-compare", action="store_true", help="IVF vs HNSW")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "rows": [],
    }
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="bench-index-") as workdir:
        settings = Settings(
            queries=args.queries,
            batch=args.batch,
            nprobes=[int(p) for p in args.nprobe.split(",")],
            nlist=args.nlist,
            workdir=Path(workdir),
            numpy_queries=max(5, args.queries // 10),
        )
        bit_lengths = [0] if args.codes else [int(b) for b in args.bits.split(",")]
        for bits in bit_lengths if sizes else []:
            queries_needed = max(args.queries, args.batch)
            if args.codes:
                codes = load_codes(args.codes, queries_needed)
            else:
                codes = synthetic_codes(max(sizes), bits, queries_needed, args.seed)
            results["codes"] = codes.source
            for n in sizes:
                if n > codes.database.shape[0]:
                    print(f"skip {size_label(n)}: only {codes.database.shape[0]} codes", flush=True)
                    continue
                print(f"== {size_label(n)} x {codes.bits} bits", flush=True)
                flat, kth = bench_flat(codes, n, settings)
                results["rows"].append(flat)
                print(f"    flat: {json.dumps(flat)}", flush=True)
                if n >= parse_size(args.ivf_min):
                    results["rows"].append(bench_ivf(codes, n, kth, flat, settings))
            del codes
        if args.filter or args.design:
            print("== filter", flush=True)
            results["filter"] = bench_filter(1_000_000, 64, 10_000, args.queries, args.seed)
            print(f"    {results['filter']}", flush=True)
        if args.approx_compare or args.design:
            print("== IVF vs HNSW", flush=True)
            approx_codes = (
                load_codes(args.codes, args.queries)
                if args.codes
                else synthetic_codes(1_000_000, 64, args.queries, args.seed)
            )
            n = min(1_000_000, approx_codes.database.shape[0])
            results["approx_compare"] = bench_approx_compare(approx_codes, n, args.queries, args.seed)
    results.setdefault("codes", SYNTHETIC)
    results["load_average_at_end"] = list(os.getloadavg())
    write_results(args.out, results, markdown(results))


if __name__ == "__main__":
    main()
