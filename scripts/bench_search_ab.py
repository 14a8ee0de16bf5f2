"""The search path of two source trees, served side by side and measured in the same minutes (issue 13).

    python -m scripts.bench_search_ab --before f7a1e93 --out benchmarks/service/search-path/ab-3

The ``before`` commit is exported with ``git archive``; ``after`` is this checkout. Each tree runs its own
``metah serve`` (no job worker, its own SQLite data dir) on loopback, with the dependencies its own
``requirements.txt`` names: when that file does not list uvicorn's ``httptools`` / ``uvloop``, the tree's server
is started with both hidden, so uvicorn falls back to h11 and asyncio as it did there. The same digits are
uploaded to both, then every query goes, in alternating order, to before and after with a plain ``http.client``
client and with httpx, and through the in-process decode → encode → index search; ``/healthz`` on both gives
the HTTP floor. Then a few rounds of searches at 1 and 8 httpx clients, and at 1 and 8 connections of ``wrk``
(a load generator in C, :mod:`workbench.wrk`, whose own CPU per request is negligible next to the server's),
alternating the servers; around each wrk run the API process's CPU time is read from ``/proc`` (all its
threads, and its main thread, the event loop), which tells how much of the two cores it turns into searches.
Alternating within one run is what makes the two comparable on a machine whose load
moves between runs.
Writes ``OUT.json`` (every figure) and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.export import load_encoder
from scripts.bench_harness import (
    REPO,
    K,
    PlainHttp,
    Server,
    build_index,
    cpu_seconds,
    describe,
    http_caller,
    image_sets,
    ingest_in_process,
    metah_serve,
    search_in_process,
    search_over_http,
    single_uploads_over_http,
)
from scripts.demo_model import ensure_demo_model
from service.settings import Settings
from workbench.loadtest import Upload, latency_summary, load_test
from workbench.machine import machine
from workbench.output import write_results
from workbench.wrk import write_bodies, wrk_searches

SIDES = ("before", "after")
FAST_HTTP = ("httptools", "uvloop")


@contextmanager
def exported_tree(revision: str) -> Iterator[Path]:
    """``revision``'s files in a temporary folder (``git archive``)."""
    with tempfile.TemporaryDirectory(prefix="metah-ab-") as folder:
        archive = subprocess.run(["git", "archive", revision], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        yield Path(folder)


def hidden_modules(tree: Path, folder: Path) -> dict[str, str]:
    """The environment that hides uvicorn's optional ``httptools`` / ``uvloop`` from ``tree``'s server when its
    ``requirements.txt`` does not name them (stub modules that raise ``ImportError``, first on the path)."""
    requirements = (tree / "requirements.txt").read_text()
    if all(f"{name}==" in requirements for name in FAST_HTTP):
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    for name in FAST_HTTP:
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} is not a dependency of this tree')\n")
    return {"PYTHONPATH": str(folder)}


def single_searches(
    servers: dict[str, Server], local: Callable[[Upload], list[int]], queries: Sequence[Upload]
) -> tuple[dict[str, Any], int, int]:
    """Per query, in alternating server order: plain client and httpx searches, ``/healthz``, in-process."""
    plain = {side: PlainHttp(server.base_url) for side, server in servers.items()}
    samples: dict[str, list[float]] = {"in_process": [], "in_process_first": []}
    for side in SIDES:
        for what in ("plain", "httpx", "healthz_plain", "took"):
            samples[f"{side}_{what}"] = []
    mismatches = errors = 0
    for i, query in enumerate(queries):
        t0 = time.perf_counter()
        expected = local(query)  # right after the previous query's HTTP calls: caches hold their work
        samples["in_process_first"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        local(query)  # the same query again, straight after: the baseline the targets are measured against
        samples["in_process"].append(time.perf_counter() - t0)
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            t0 = time.perf_counter()
            status, body = plain[side].search(query)
            samples[f"{side}_plain"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            response = search_over_http(servers[side].client, query)
            samples[f"{side}_httpx"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plain[side].request("GET", "/healthz")
            samples[f"{side}_healthz_plain"].append(time.perf_counter() - t0)
            if status != 200 or response.status_code != 200:
                errors += 1
                continue
            answers = (json.loads(body), response.json())
            samples[f"{side}_took"].append(answers[0]["took_ms"] / 1e3)
            mismatches += sum([hit["distance"] for hit in answer["hits"]] != expected for answer in answers)
    for client in plain.values():
        client.close()
    return {name: latency_summary(values) for name, values in samples.items()}, mismatches, errors


def in_process_round(local: Callable[[Upload], list[int]], queries: Sequence[Upload]) -> dict[str, float]:
    """:func:`latency_summary` of one in-process search per query, each timed once (no immediate repeat)."""
    seconds = []
    for query in queries:
        started = time.perf_counter()
        local(query)
        seconds.append(time.perf_counter() - started)
    return latency_summary(seconds)


def throughput(
    servers: dict[str, Server],
    queries: Sequence[Upload],
    rounds: int,
    seconds: float,
    bodies: Path,
    local: Callable[[Upload], list[int]],
) -> dict[str, Any]:
    """Searches/s at 1 and 8 httpx clients and at 1 and 8 wrk connections (``wrk_1``, ``wrk_8``), ``rounds``
    rounds alternating which server goes first. ``bodies``: a folder for wrk's request bodies. Right before each
    round's single-connection wrk runs the in-process search is timed over the queries (``in_process_round``), so
    the HTTP overhead can be taken within the round: this machine's speed moves between rounds."""
    names = write_bodies(queries, bodies)
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(rounds):
        for clients in (1, 8):
            for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                row = load_test(http_caller(servers[side], queries), clients, seconds, 100_000)
                runs.setdefault(f"{side}_{clients}", []).append(row)
            if clients == 1:
                runs.setdefault("in_process_round", []).append(in_process_round(local, queries))
            for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                pid = servers[side].pid
                used = cpu_seconds(pid), cpu_seconds(pid, thread=pid)
                row = wrk_searches(servers[side].base_url, f"/v1/search?k={K}", bodies, names, clients, seconds)
                row["server_cpu_s"] = cpu_seconds(pid) - used[0]  # the whole API process, every thread
                row["loop_cpu_s"] = cpu_seconds(pid, thread=pid) - used[1]  # its main thread: the event loop
                runs.setdefault(f"{side}_wrk_{clients}", []).append(row)
    out: dict[str, Any] = {"in_process_round": {"runs": runs.pop("in_process_round")}}
    for key, rows in runs.items():
        out[key] = {"qps_median": statistics.median(r["qps"] for r in rows), "runs": rows}
        if "wrk" in key:
            out[key]["median_ms"] = statistics.median(r["median_ms"] for r in rows)
            out[key]["cores_median"] = statistics.median(r["server_cpu_s"] / r["seconds"] for r in rows)
            out[key]["loop_cores_median"] = statistics.median(r["loop_cpu_s"] / r["seconds"] for r in rows)
            out[key]["cpu_ms_per_search_median"] = statistics.median(
                1e3 * r["server_cpu_s"] / r["requests"] for r in rows
            )
    baseline = [r["median_ms"] for r in out["in_process_round"]["runs"]]
    for side in SIDES:
        overheads = [r["median_ms"] - ms for r, ms in zip(out[f"{side}_wrk_1"]["runs"], baseline, strict=True)]
        out[f"{side}_wrk_1"]["overhead_ms_by_round"] = overheads
        out[f"{side}_wrk_1"]["overhead_ms"] = statistics.median(overheads)
    return out


def report(results: dict[str, Any]) -> str:
    s, qps = results["search"], results["throughput"]
    lines = [
        "# The search path, before and after, interleaved in one run",
        "",
        f"{describe(results['machine'])}. Before: `{results['before']}`"
        f"{' (httptools and uvloop hidden: not in its requirements)' if results['before_hidden'] else ''}; "
        f"after: `{results['machine']['commit']}`. {results['images']} digits stored on each server, "
        f"{results['queries']} queries (k=10). Wall time {results['wall_seconds']:.0f} s.",
        f"Command: `{results['command']}`",
        "",
        "| median ms (p99) | before | after |",
        "|---|---:|---:|",
    ]
    rows = (
        ("`POST /v1/search`, plain `http.client` client", "plain"),
        ("`POST /v1/search`, httpx client", "httpx"),
        ("… the server's `took_ms`", "took"),
        ("`GET /healthz`, plain client (HTTP floor)", "healthz_plain"),
    )
    for name, key in rows:
        cells = [f"{s[f'{side}_{key}']['median_ms']:.2f} ({s[f'{side}_{key}']['p99_ms']:.2f})" for side in SIDES]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    local = s["in_process"]["median_ms"]
    lines.append(f"| in-process decode → encode → index search | {local:.2f} | {local:.2f} |")
    if "in_process_first" in s:  # runs before it was measured lack it
        first = s["in_process_first"]["median_ms"]
        lines.append(f"| … the same, first call per query (after the HTTP calls) | {first:.2f} | {first:.2f} |")
    for name, key in (("plain client", "plain"), ("httpx", "httpx")):
        cells = [f"**{s[f'{side}_{key}']['median_ms'] - local:.2f}**" for side in SIDES]
        lines.append(f"| HTTP − in-process, {name} (target ≤ 1.5) | {' | '.join(cells)} |")
    for clients in (1, 8):
        before, after = (qps[f"{side}_{clients}"]["qps_median"] for side in SIDES)
        lines.append(
            f"| searches/s, {clients} httpx client{'s' if clients > 1 else ''} (median of "
            f"{len(qps[f'before_{clients}']['runs'])} rounds) | {before:.1f} | {after:.1f} (×{after / before:.2f}) |"
        )
    for clients in (1, 8):
        if f"before_wrk_{clients}" not in qps:  # written before wrk was part of the run
            continue
        before, after = (qps[f"{side}_wrk_{clients}"]["qps_median"] for side in SIDES)
        lines.append(
            f"| searches/s, {clients} wrk connection{'s' if clients > 1 else ''} (median of "
            f"{len(qps[f'before_wrk_{clients}']['runs'])} rounds) | {before:.1f} | "
            f"{after:.1f} (×{after / before:.2f}) |"
        )
    for clients in (1, 8):
        if "cores_median" not in qps.get(f"before_wrk_{clients}", {}):  # written before CPU was measured
            continue
        cells = [
            f"{row['cores_median']:.2f} ({row['loop_cores_median']:.2f}); {row['cpu_ms_per_search_median']:.2f}"
            for row in (qps[f"{side}_wrk_{clients}"] for side in SIDES)
        ]
        lines.append(
            f"| API process at {clients} wrk connection{'s' if clients > 1 else ''}: CPU cores in use (event loop "
            f"thread); CPU ms per search (medians of rounds) | {' | '.join(cells)} |"
        )
    if "before_wrk_1" in qps:
        cells = [f"{qps[f'{side}_wrk_1']['median_ms']:.2f}" for side in SIDES]
        lines.append(f"| `POST /v1/search`, 1 wrk connection, median ms (median of rounds) | {' | '.join(cells)} |")
        cells = [f"**{qps[f'{side}_wrk_1']['median_ms'] - local:.2f}**" for side in SIDES]
        lines.append(f"| HTTP − in-process, wrk (target ≤ 1.5) | {' | '.join(cells)} |")
    if "in_process_round" in qps:  # runs before it was measured lack it
        rounds = ", ".join(f"{r['median_ms']:.2f}" for r in qps["in_process_round"]["runs"])
        lines.append(
            f"| in-process, timed in each round right before its 1-connection wrk runs | {rounds} | {rounds} |"
        )
        cells = [
            f"**{qps[f'{side}_wrk_1']['overhead_ms']:.2f}** ("
            + ", ".join(f"{x:.2f}" for x in qps[f"{side}_wrk_1"]["overhead_ms_by_round"])
            + ")"
            for side in SIDES
        ]
        lines.append(
            f"| HTTP − in-process, wrk, within each round: median (rounds) (target ≤ 1.5) | {' | '.join(cells)} |"
        )
    errors = sum(r["errors"] for key, row in qps.items() if "wrk" in key for r in row["runs"])
    lines += ["", f"Distance mismatches against in-process: {results['mismatches']}; errors: {results['errors']}"]
    lines[-1] += f" (and {errors} in the wrk runs)." if "before_wrk_1" in qps else "."
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with (this checkout: after)")
    parser.add_argument("--out", type=Path, required=True, help="write OUT.json and OUT.md")
    parser.add_argument("--model-dir", type=Path, default=Path("var/demo-model"), help="demo model (trained if absent)")
    parser.add_argument("--work", type=Path, default=Path("var/bench-search-ab"), help="servers' data dirs and logs")
    parser.add_argument("--images", type=int, default=1000, help="digits stored on each server")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    args = parser.parse_args()
    started = time.perf_counter()
    model_path = ensure_demo_model(args.model_dir, "digits")
    settings = Settings()
    torch.set_num_threads(settings.torch_threads)  # the service's single-image setting, for the in-process baseline
    encoder, max_pixels = load_encoder(model_path), settings.max_pixels
    stored, _, queries = image_sets(args.images, 0, args.queries)
    codes = np.concatenate(ingest_in_process(encoder, stored, 64, max_pixels)["codes"])
    index = build_index(
        str(encoder.metadata["model_version"]),
        encoder.bits,
        np.arange(len(codes), dtype=np.int64),
        codes,
        [u.domain for u in stored],
    )

    def local(query: Upload) -> list[int]:
        return search_in_process(encoder, index, query.data, max_pixels)

    with ExitStack() as stack:
        trees = {"before": stack.enter_context(exported_tree(args.before)), "after": REPO}
        hidden = hidden_modules(trees["before"], args.work / "hidden")
        servers = {}
        for side, tree in trees.items():
            folder = args.work / side
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            environment = hidden if side == "before" else {}
            server = metah_serve(folder, model_path, 0, folder / "serve.log", environment, tree)
            servers[side] = stack.enter_context(server)
            if (created := single_uploads_over_http(servers[side], stored)["created"]) != len(stored):
                raise RuntimeError(f"{side}: {created} of {len(stored)} uploads created: see {folder / 'serve.log'}")
        print("single searches", flush=True)
        search, mismatches, errors = single_searches(servers, local, queries)
        print("throughput", flush=True)
        qps = throughput(servers, queries, args.rounds, args.seconds, args.work / "wrk-bodies", local)
    results = {
        "machine": machine(),
        "before": args.before,
        "before_hidden": bool(hidden),
        "command": "python -m scripts.bench_search_ab "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "images": len(stored),
        "queries": len(queries),
        "search": search,
        "throughput": qps,
        "mismatches": mismatches,
        "errors": errors,
        "wall_seconds": time.perf_counter() - started,
    }
    write_results(args.out, results, report(results))


if __name__ == "__main__":
    main()
