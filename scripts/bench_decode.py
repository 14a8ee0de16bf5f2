"""Benchmark ``model.preprocess.decode_image`` on a 12-megapixel JPEG: full-scale decode vs JPEG draft mode.

The photo: a real picture (default ``tests/fixtures/coffee.png``, 270×180, CC0) upscaled with Pillow's Lanczos
filter to 4032×3024 and encoded as JPEG (quality 90, 4:2:0) in memory, so no disk I/O is timed. An upscaled
photo is smoother than a camera's, which changes the JPEG's size a little but not the work per pixel of the
decoder. Each timed call is the whole ``decode_image`` (decode → RGB → bilinear resize) for one input size, once
with ``draft=False`` (the full-scale decode every caller did before) and once as every caller does now.

Both variants are interleaved within one run (ABBA order per repeat, after warm-up calls), so a neighbour's load
shifts both alike; the ratio of medians is the figure to quote. PIL decodes and resizes on the calling thread
only. Wall-clock and process CPU time are both recorded.

    nice -n 5 .venv/bin/python scripts/bench_decode.py --out benchmarks/decode/results

Results: ``OUT.json`` (every sample, machine, date, git commit, command) and ``OUT.md`` (the table).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, features

from model.preprocess import decode_image, draft_scale
from workbench.machine import machine
from workbench.output import write_results

ROOT = Path(__file__).resolve().parents[1]
PHOTO_SIZE = (4032, 3024)  # (width, height): a 12-megapixel 4:3 phone photo


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    changed = git("status", "--porcelain", "--", "model/preprocess.py", "scripts/bench_decode.py")
    return {"commit": git("rev-parse", "HEAD"), "measured_files_differ_from_commit": bool(changed)}


def make_photo(source: Path, quality: int) -> bytes:
    with Image.open(source) as image:
        photo = image.convert("RGB").resize(PHOTO_SIZE, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def timed(call: Callable[[], object]) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in seconds)
    return {
        "median_ms": statistics.median(ms),
        "p10_ms": ms[len(ms) // 10],
        "p90_ms": ms[(9 * len(ms)) // 10],
        "min_ms": ms[0],
    }


def bench_size(data: bytes, size: tuple[int, int], repeats: int, warmup: int) -> dict[str, Any]:
    variants: dict[str, Callable[[], object]] = {
        "full": lambda: decode_image(data, size, draft=False),
        "draft": lambda: decode_image(data, size),
    }
    for _ in range(warmup):
        for call in variants.values():
            call()
    samples: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in variants}
    for repeat in range(repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))  # ABBA: drift hits both alike
        for name in order:
            wall, cpu = timed(variants[name])
            samples[name]["wall"].append(wall)
            samples[name]["cpu"].append(cpu)
    full, drafted = (decode_image(data, size, draft=False), decode_image(data, size))
    difference = np.abs(full.astype(np.int16) - drafted.astype(np.int16))
    scale = draft_scale(PHOTO_SIZE, size)
    result: dict[str, Any] = {
        "size": list(size),
        "draft_scale": scale,
        "decoded_size": [-(-PHOTO_SIZE[0] // scale), -(-PHOTO_SIZE[1] // scale)],
        "mean_abs_difference": round(float(difference.mean()), 4),
        "max_abs_difference": int(difference.max()),
    }
    for name in variants:
        result[name] = {
            "wall": summary(samples[name]["wall"]),
            "cpu": summary(samples[name]["cpu"]),
            "wall_samples_ms": [round(1000 * s, 3) for s in samples[name]["wall"]],
        }
    result["speedup_wall"] = result["full"]["wall"]["median_ms"] / result["draft"]["wall"]["median_ms"]
    result["speedup_cpu"] = result["full"]["cpu"]["median_ms"] / result["draft"]["cpu"]["median_ms"]
    return result


def markdown(report: dict[str, Any]) -> str:
    m, photo = report["machine"], report["photo"]
    lines = [
        "# decode_image on a 12-megapixel JPEG: full scale vs draft mode",
        "",
        f"Command: `{report['command']}`  ",
        f"Git commit: `{report['git']['commit']}`"
        + (" (measured files differed from it)" if report["git"]["measured_files_differ_from_commit"] else "")
        + "  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['cpus_available']} available); Python {m['python']}, "
        f"Pillow {m['pillow']}, libjpeg {m['libjpeg']}"
        + (" (libjpeg-turbo)" if m["libjpeg_turbo"] else "")
        + f"; load average {report['load_average_at_start']} at start, {report['load_average_at_end']} at end.  ",
        f"Photo: {photo['description']}; {photo['bytes']:,} bytes, sha256 `{photo['sha256'][:16]}…`.  ",
        f"Timing: median of {report['repeats']} interleaved repeats per variant (ABBA order) after "
        f"{report['warmup']} warm-up calls each, one thread, bytes in memory; each call is the whole "
        "`decode_image` (decode → RGB → bilinear resize).",
        "",
        "| input size | draft scale (decoded size) | full scale ms (p10–p90) | draft ms (p10–p90) | × wall | "
        "full CPU ms | draft CPU ms | × CPU | mean / max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        full, drafted = r["full"], r["draft"]
        lines.append(
            f"| {r['size'][0]}×{r['size'][1]} | 1/{r['draft_scale']} ({r['decoded_size'][0]}×{r['decoded_size'][1]}) "
            f"| {full['wall']['median_ms']:.1f} ({full['wall']['p10_ms']:.1f}–{full['wall']['p90_ms']:.1f}) "
            f"| {drafted['wall']['median_ms']:.1f} ({drafted['wall']['p10_ms']:.1f}–{drafted['wall']['p90_ms']:.1f}) "
            f"| {r['speedup_wall']:.1f} | {full['cpu']['median_ms']:.1f} | {drafted['cpu']['median_ms']:.1f} "
            f"| {r['speedup_cpu']:.1f} | {r['mean_abs_difference']:.2f} / {r['max_abs_difference']} |"
        )
    lines += [
        "",
        "Mean / max abs diff: between the two variants' uint8 outputs (0–255), over every pixel and channel.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("tests/fixtures/coffee.png"), help="photo to upscale")
    parser.add_argument("--sizes", default="224,260", help="square input sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    if args.repeats < 20:
        parser.error("--repeats must be at least 20")

    load_start = [round(x, 2) for x in os.getloadavg()]
    data = make_photo(args.source, args.quality)
    with Image.open(args.source) as source:
        source_size = source.size
    results = [bench_size(data, (side, side), args.repeats, args.warmup) for side in map(int, args.sizes.split(","))]
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "git": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(
            libjpeg=features.version("jpg"), libjpeg_turbo=bool(features.check_feature("libjpeg_turbo"))
        ),
        "load_average_at_start": load_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "photo": {
            "description": (
                f"{args.source.as_posix()} ({source_size[0]}×{source_size[1]}) upscaled with Lanczos to "
                f"{PHOTO_SIZE[0]}×{PHOTO_SIZE[1]}, JPEG quality {args.quality}"
            ),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        "repeats": args.repeats,
        "warmup": args.warmup,
        "results": results,
    }
    write_results(args.out, report, markdown(report), indent=2)


if __name__ == "__main__":
    main()
