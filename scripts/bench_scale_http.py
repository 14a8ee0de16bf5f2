"""Search throughput over HTTP with 100k and 1M stored images (issue 6), where ``make bench`` only reaches them
in-process.

Filling a server through its API would take hours here, so the rows go straight into its database: the demo
model registered as usual, then ``n`` image rows (distinct synthetic hashes, no blob: a search never reads
one) with codes resampled from the real codes of USPS and MNIST-M digits. The server then starts with no
index snapshot and builds its index from those rows, as any replica does. Queries are real digits not stored.
Writes OUT/scale.json and OUT/scale.md.

    .venv/bin/python -m scripts.bench_scale_http --out benchmarks/service --sizes 100k,1M
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert

from model.export import load_encoder
from scripts.bench_harness import (
    CLIENTS,
    describe,
    http_caller,
    image_sets,
    metah_serve,
    wait_for,
)
from scripts.demo_model import ensure_demo_model
from service.catalog import NewImage, image_values
from service.db import Database
from service.migrate import upgrade
from service.models import Code, Image
from service.pipeline import ImageInfo, decode, encode
from service.registry import register_artefact
from service.settings import Settings
from service.storage import blob_key, open_blob_store
from workbench.loadtest import load_test
from workbench.machine import machine
from workbench.sizes import parse_size, size_label

CHUNK = 50_000


def fill(data_dir: Path, model: Path, codes: np.ndarray, domains: list[str], n: int, seed: int) -> float:
    """Register the model and insert ``n`` rows with resampled codes; returns the seconds it took."""
    started = time.perf_counter()
    settings = Settings(data_dir=data_dir, api_key=None, workers=0)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    try:
        version = register_artefact(db, open_blob_store(settings), model, activate=True).version
        picks = np.random.default_rng(seed).integers(0, len(codes), size=n)
        for start in range(0, n, CHUNK):
            rows = range(start, min(start + CHUNK, n))
            with db.session() as session:
                ids = session.scalars(
                    insert(Image).returning(Image.id, sort_by_parameter_order=True),
                    [synthetic_image(i, domains[picks[i]]) for i in rows],
                ).all()
                session.execute(
                    insert(Code),
                    [
                        {"image_id": id_, "model_version": version, "code": codes[picks[i]].tobytes()}
                        for id_, i in zip(ids, rows, strict=True)
                    ],
                )
                session.commit()
    finally:
        db.close()
    return time.perf_counter() - started


def synthetic_image(i: int, domain: str) -> dict[str, Any]:
    """The column values of the ``i``-th synthetic row (no bytes behind it: searches never read them)."""
    digest = hashlib.sha256(f"synthetic-{i}".encode()).hexdigest()
    return image_values(digest, ImageInfo("image/png", 28, 28), 0, blob_key(digest), NewImage(domain))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("var/bench-scale"))
    parser.add_argument("--sizes", default="100k,1M")
    parser.add_argument("--real", type=int, default=4000, help="real digits whose codes are resampled")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    parser.add_argument("--max-requests", type=int, default=20_000)
    args = parser.parse_args()
    model = ensure_demo_model(Path("var/demo-model"), "digits")
    encoder = load_encoder(model)
    max_pixels = Settings.model_construct().max_pixels
    real, _, queries = image_sets(args.real, 0, args.queries)
    codes = encode(encoder, np.stack([decode(encoder, u.data, max_pixels) for u in real]))
    domains = [u.domain for u in real]
    results: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "scripts.bench_scale_http", *sys.argv[1:]]),
        "model": f"{encoder.metadata['model_version']} ({encoder.metadata['backbone']}, {encoder.bits} bits)",
        "distinct_real_codes": len({c.tobytes() for c in codes}),
        "sizes": [],
    }
    for n in (parse_size(text) for text in args.sizes.split(",")):
        data_dir = args.work / size_label(n)
        shutil.rmtree(data_dir, ignore_errors=True)
        filled = fill(data_dir, model, codes, domains, n, seed=n)
        print(f"{size_label(n)}: {filled:.0f} s to fill the database", flush=True)
        started = time.perf_counter()
        with metah_serve(data_dir, model, workers=0, log_path=args.work / f"serve-{size_label(n)}.log") as server:
            wait_for(lambda: server.client.get("/readyz").json().get("indexed") == n, 600, "the index")  # noqa: B023
            ready_s = time.perf_counter() - started
            row: dict[str, Any] = {"n": n, "fill_seconds": filled, "start_to_ready_seconds": ready_s, "levels": []}
            for clients in CLIENTS:
                level = load_test(http_caller(server, queries), clients, args.seconds, args.max_requests)
                row["levels"].append({"clients": clients, **level})
                print(f"  {clients} clients: {level}", flush=True)
            row["api_rss_kib"] = server.memory()["api"]
        results["sizes"].append(row)
        shutil.rmtree(data_dir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Search over HTTP with 100k and 1M stored images",
        "",
        f"Machine: {describe(results['machine'])}",
        f"Date: {results['date']}. Command: `{results['command']}`",
        f"Model: {results['model']}. Rows inserted straight into the database with codes resampled from "
        f"{args.real} real digits ({results['distinct_real_codes']} distinct codes); real, unstored queries.",
        "",
        "| stored | clients | requests | QPS | p50 ms | p99 ms | errors | API RSS MiB | start → ready s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["sizes"]:
        for level in row["levels"]:
            lines.append(
                f"| {size_label(row['n'])} | {level['clients']} | {level['requests']} | {level['qps']:.1f} | "
                f"{level['latency_median_ms']:.2f} | {level['latency_p99_ms']:.2f} | {level['errors']} | "
                f"{row['api_rss_kib']['VmRSS'] / 1024:.0f} | {row['start_to_ready_seconds']:.1f} |"
            )
    (args.out / "scale.md").write_text("\n".join(lines) + "\n")
    print((args.out / "scale.md").read_text())


if __name__ == "__main__":
    main()
