"""Peak memory of ``metah train`` on a folder of 50,000 generated images: frozen and finetune, bounded or not.

The images: 10 classes of 64×64 PNGs, each class one kind of shape (disc, square, triangle, …) drawn at a
seeded random place, size and colour on a random background, all distinct files (checked by content); an
unlabelled target folder of 10,000 more from another seed, darker backgrounds. They are generated once under
``--work`` (``var/bench-memory`` by default) and reused; the "5k" and "1k" folders (5,000 + 1,000 and
1,000 + 200 images) are hard links to the first images of each class and the first targets.

Each run is one fresh ``python -m service.cli train …`` subprocess with the product's defaults except what the
run names (fewer iterations: memory, not accuracy, is measured). While it runs, its process tree (the trainer
and its ``DataLoader`` workers) is sampled every 0.2 s from ``/proc``: the *tree* figure is the trainer's
resident set plus each worker's private pages, so every page of the tree counts once (a forked worker shares
its parent's pages until it writes them); the sums of resident sets (shared pages once per process, an upper
bound) and of proportional sets are recorded too. After it exits, ``wait4`` gives the kernel's exact peak
resident set of the trainer (``ru_maxrss``). Each run gets a fresh feature cache and run folder, so frozen runs
compute every feature (the first run on a folder: the costlier case). The bound (budget + an allowance per
backbone, see :data:`ALLOWANCE_MB`) is checked on the larger of the trainer's and the tree's peaks.

Frozen needs a pretrained backbone, and EfficientNet-Lite0 costs about 15 ms per image on the 2-core CPU this
was written on (15 minutes per 60,000 images and view), so the 50k frozen runs use **LeNet with a weights file
of random weights** saved by this script (Lite0 runs frozen on the 1k folder only): a weights file makes a
backbone count as pretrained (model/choice.py). Its features mean nothing, but they are stored, read and batched
exactly like real ones (512 float16 numbers per image and view). The finetune runs include EfficientNet-Lite0 at
224×224, whose 60,000 decoded images (9 GB) are far above the 1 GB budget, so they stream from disk; it runs 5
small steps only, but encodes every source image for the end-of-run evaluation like any run (the longest part:
about an hour here).

    nice -n 5 .venv/bin/python -m scripts.bench_memory --out benchmarks/memory/results

Results: ``OUT.json`` (every run's figures and a 1-second memory trace, machine, date, git commit, command)
and ``OUT.md`` (the table).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.backbones import build_backbone
from workbench.machine import machine

ROOT = Path(__file__).resolve().parents[1]
SIDE = 64
CLASSES = ("disc", "square", "triangle", "cross", "ring", "diamond", "bars", "pentagon", "saltire", "frame")
SAMPLE_SECONDS = 0.2
BUDGET_MB = 1024  # TrainConfig.memory_budget_mb's default
# The stated bound: a run's process tree stays under its memory budget plus the backbone's allowance (what a run
# needs besides the data the budget governs: Python + torch, the network, its activations, evaluation, workers).
# The highest peaks over the budget in a first full run (benchmarks/memory/results-dca4ef4.md), plus about 30 %.
ALLOWANCE_MB = {"lenet": 2048, "efficientnet_lite0": 6144}
BOUND_REASON = (
    "The budget governs the training data a run holds (decoded images, or cached features); the allowance covers "
    "what it needs besides: Python with this CUDA build of torch (about 0.7 GB resident after `import torch`), "
    "the backbone, optimiser and activations at the run's batch size, the end-of-run evaluation (encoding in "
    "batches of 128, ranking at most 4M (query, item) pairs at a time) and the loader workers' own pages. "
    "LeNet's activations are small. EfficientNet-Lite0's at 224×224 take gigabytes: the trainer rises from "
    "2.5 GB while training to 4.1 GB with each 128-image encoding batch, and the encoding loader's worker, forked "
    "from a 2.5 GB trainer, ends up holding about 1 GB of its pages as the trainer rewrites them (copy-on-write). "
    "The allowances are the highest peaks over the budget of a first full run (`results-dca4ef4.md`: LeNet "
    "1.54 GB, EfficientNet-Lite0 4.57 GB) plus about 30 %; the 1.5 GB and 4 GB stated before that run, from "
    "small trials, were missed by EfficientNet-Lite0 finetune (4.8 GB at a 256 MB budget, 5.3 GB at 1 GB). "
    "What still grows with the folder: a few KB per image (paths, sizes and codes in the trainer, the path list "
    "in each loader worker); see the folder-size table."
)


# ----------------------------------------------------------------------------------------------- images


def _polygon(center: tuple[float, float], radius: float, corners: int, turn: float) -> list[tuple[float, float]]:
    angles = turn + 2 * np.pi * np.arange(corners) / corners
    return [(center[0] + radius * np.cos(a), center[1] + radius * np.sin(a)) for a in angles]


def draw_shape(kind: int, rng: np.random.Generator, dark: bool) -> Image.Image:
    """One 64×64 RGB picture of shape ``kind`` (an index into :data:`CLASSES`) drawn from ``rng``."""
    low, high = (0, 110) if dark else (90, 256)
    background = tuple(int(v) for v in rng.integers(low, high, 3))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (SIDE, SIDE), background)
    draw = ImageDraw.Draw(image)
    r = float(rng.uniform(10, 24))
    cx, cy = (float(v) for v in rng.uniform(r, SIDE - r, 2))
    turn = float(rng.uniform(0, 2 * np.pi))
    width = int(rng.integers(3, 8))
    box = (cx - r, cy - r, cx + r, cy + r)
    name = CLASSES[kind]
    if name == "disc":
        draw.ellipse(box, fill=colour)
    elif name == "square":
        draw.polygon(_polygon((cx, cy), r, 4, turn), fill=colour)
    elif name == "triangle":
        draw.polygon(_polygon((cx, cy), r, 3, turn), fill=colour)
    elif name == "cross":
        draw.rectangle((cx - r, cy - width, cx + r, cy + width), fill=colour)
        draw.rectangle((cx - width, cy - r, cx + width, cy + r), fill=colour)
    elif name == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif name == "diamond":
        draw.polygon(_polygon((cx, cy), r, 4, np.pi / 4), fill=colour)
    elif name == "bars":
        for offset in (-r / 2, r / 2):
            draw.rectangle((cx - r, cy + offset - width / 2, cx + r, cy + offset + width / 2), fill=colour)
    elif name == "pentagon":
        draw.polygon(_polygon((cx, cy), r, 5, turn), fill=colour)
    elif name == "saltire":
        draw.line((cx - r, cy - r, cx + r, cy + r), fill=colour, width=width)
        draw.line((cx - r, cy + r, cx + r, cy - r), fill=colour, width=width)
    else:  # frame
        draw.rectangle(box, outline=colour, width=width)
    return image


def _png(image: Image.Image) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def generate_folder(folder: Path, count: int, seed: int, labelled: bool) -> dict[str, Any]:
    """Write ``count`` distinct PNGs (class folders when ``labelled``) unless a finished folder is there."""
    done = folder / ".done.json"
    if done.exists():
        info: dict[str, Any] = json.loads(done.read_text())
        if info["count"] == count and info["seed"] == seed:
            return info
    shutil.rmtree(folder, ignore_errors=True)
    seen: set[bytes] = set()
    total_bytes = 0
    for index in range(count):
        kind = index % len(CLASSES)
        rng = np.random.default_rng([seed, index])
        while True:  # a repeat is all but impossible; redraw if it happens, the files must be distinct
            data = _png(draw_shape(kind, rng, dark=not labelled))
            digest = hashlib.sha256(data).digest()
            if digest not in seen:
                seen.add(digest)
                break
        path = (
            folder / CLASSES[kind] / f"{index:06d}.png"
            if labelled
            else folder / f"{index // 1000:03d}" / f"{index:06d}.png"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total_bytes += len(data)
    info = {"count": count, "seed": seed, "labelled": labelled, "bytes": total_bytes, "distinct": len(seen)}
    done.write_text(json.dumps(info))
    return info


def linked_subset(source: Path, folder: Path, count: int, labelled: bool) -> dict[str, Any]:
    """Hard links to the first ``count`` images of ``source``: the same number from every class when
    ``labelled``, else the first ``count`` in path order."""
    done = folder / ".done.json"
    if done.exists():
        info: dict[str, Any] = json.loads(done.read_text())
        if info["count"] == count:
            return info
    shutil.rmtree(folder, ignore_errors=True)
    if labelled:
        classes = sorted(p for p in source.iterdir() if p.is_dir())
        chosen = [path for group in classes for path in sorted(group.glob("*.png"))[: count // len(classes)]]
    else:
        chosen = sorted(source.rglob("*.png"))[:count]
    for path in chosen:
        link = folder / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)
    info = {"count": len(chosen), "linked_from": source.name}
    done.write_text(json.dumps(info))
    return info


# ---------------------------------------------------------------------------------------------- memory


def _process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _kib_fields(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    found = {}
    with open(path) as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in keys:
                found[key] = int(value.split()[0])
    return found


@dataclass
class ProcessMemory:
    rss: int  # KiB: VmRSS, every resident page mapped, shared or not
    pss: int  # KiB: shared pages divided between the processes sharing them
    private: int  # KiB: pages no other process maps (Private_Clean + Private_Dirty)


def process_memory(pid: int) -> ProcessMemory | None:
    try:
        rss = _kib_fields(f"/proc/{pid}/status", ("VmRSS",)).get("VmRSS", 0)
        rollup = _kib_fields(f"/proc/{pid}/smaps_rollup", ("Pss", "Private_Clean", "Private_Dirty"))
    except (OSError, ValueError):  # the process ended between the listing and the read
        return None
    if not rss:  # a zombie
        return None
    return ProcessMemory(rss, rollup.get("Pss", 0), rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0))


@dataclass
class Sample:
    """One look at the tree, in KiB.

    ``tree``: the trainer's resident set plus its workers' private pages: every page the tree maps counted once
    (a forked worker shares its parent's pages until it writes them), pages shared with unrelated processes
    included. ``tree_rss``: the sum of resident sets (counts shared pages once per process; an upper bound).
    ``tree_pss``: the sum of proportional sets (a page shared with any process, related or not, split).
    """

    seconds: float
    processes: int
    trainer: int
    tree: int
    tree_rss: int
    tree_pss: int
    largest_worker_private: int


def sample_tree(root: int, started: float) -> Sample | None:
    memory = {pid: m for pid in _process_tree(root) if (m := process_memory(pid)) is not None}
    if root not in memory:
        return None
    workers = [m.private for pid, m in memory.items() if pid != root]
    return Sample(
        round(time.perf_counter() - started, 2),
        len(memory),
        memory[root].rss,
        memory[root].rss + sum(workers),
        sum(m.rss for m in memory.values()),
        sum(m.pss for m in memory.values()),
        max(workers, default=0),
    )


TRACE_COLUMNS = ("seconds", "trainer_rss_mb", "tree_mb", "tree_rss_sum_mb", "tree_pss_sum_mb", "processes")


def trace(samples: list[Sample], rows: int = 600) -> list[list[float]]:
    """At most ``rows`` samples, one per window of at least a second: each window's largest tree figure."""
    window = max(1.0, samples[-1].seconds / rows)
    kept: dict[int, Sample] = {}
    for sample in samples:
        slot = int(sample.seconds // window)
        if slot not in kept or sample.tree > kept[slot].tree:
            kept[slot] = sample
    return [
        [s.seconds, *(round(v / 1024) for v in (s.trainer, s.tree, s.tree_rss, s.tree_pss)), s.processes]
        for s in kept.values()
    ]


def _stamp_lines(stream: TextIO, log: TextIO, started: float, lines: list[tuple[float, str]]) -> None:
    for line in stream:
        at = time.perf_counter() - started
        lines.append((round(at, 2), line.rstrip()))
        log.write(f"[{at:8.2f}s] {line}")
        log.flush()


@dataclass
class Measured:
    exit_code: int
    wall_seconds: float
    trainer_max_rss_kib: int
    samples: list[Sample]
    log_lines: list[tuple[float, str]]


def run_measured(command: list[str], env: dict[str, str], log_path: Path) -> Measured:
    """Run ``command``, sampling its process tree every :data:`SAMPLE_SECONDS` until it exits."""
    started = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with log_path.open("w") as log:
        log.write(shlex.join(command) + "\n")
        child = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert child.stdout is not None
        reader = threading.Thread(target=_stamp_lines, args=(child.stdout, log, started, lines), daemon=True)
        reader.start()
        samples: list[Sample] = []
        tick = started
        while True:
            sample = sample_tree(child.pid, started)
            if sample is not None:
                samples.append(sample)
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid == child.pid:
                break
            tick += SAMPLE_SECONDS  # a fixed schedule: the time a sample takes does not stretch the interval
            time.sleep(max(0.0, tick - time.perf_counter()))
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        reader.join(timeout=10)
    return Measured(child.returncode, time.perf_counter() - started, usage.ru_maxrss, samples, lines)


# ------------------------------------------------------------------------------------------------- runs

FOLDERS = {"50k": "50,000 + 10,000", "5k": "5,000 + 1,000", "1k": "1,000 + 200"}


@dataclass(frozen=True)
class Run:
    """One ``metah train`` invocation; ``None`` leaves the product's default."""

    name: str
    folder: str  # a key of FOLDERS
    backbone: str  # what the run uses (passed on the command line unless ``auto``)
    expect: str  # metrics.json "batches"
    note: str
    mode: str | None = None
    auto: bool = False  # no --backbone / --mode: the product's choice
    pretrained_lenet: bool = False
    iterations: int = 200
    batch_size: int | None = None
    memory_budget_mb: int | None = None
    loader_workers: int | None = None

    @property
    def budget_mb(self) -> int:
        return self.memory_budget_mb or BUDGET_MB

    @property
    def bound_mb(self) -> int:
        return self.budget_mb + ALLOWANCE_MB[self.backbone]


def frozen_lenet(name: str, folder: str, expect: str, note: str, budget: int | None = None) -> Run:
    return Run(name, folder, "lenet", expect, note, mode="frozen", pretrained_lenet=True, memory_budget_mb=budget)


def streamed_lenet(name: str, folder: str, note: str, workers: int | None = None) -> Run:
    return Run(name, folder, "lenet", "images_streamed", note, "finetune", memory_budget_mb=8, loader_workers=workers)


def lite0(name: str, folder: str, mode: str, expect: str, note: str, budget: int | None = None) -> Run:
    """Finetune takes 5 steps of 8 + 8 images (each one takes seconds on a CPU); frozen keeps the defaults."""
    iterations, batch_size = (5, 8) if mode == "finetune" else (200, None)
    return Run(
        name,
        folder,
        "efficientnet_lite0",
        expect,
        note,
        mode,
        iterations=iterations,
        batch_size=batch_size,
        memory_budget_mb=budget,
    )


RUNS = (
    frozen_lenet("frozen", "50k", "features_in_memory", "LeNet frozen; its 240 MB of features fit the budget"),
    frozen_lenet("frozen-5k", "5k", "features_in_memory", "the same on a tenth of the images"),
    frozen_lenet("frozen-disk", "50k", "features_from_disk", "LeNet frozen, 4 MB budget: features read per batch", 4),
    frozen_lenet("frozen-disk-5k", "5k", "features_from_disk", "the same on a tenth of the images", 4),
    Run(
        "auto",
        "50k",
        "lenet",
        "images_in_memory",
        "every default (auto picks LeNet, finetune); 184 MB of decoded images, held in memory",
        auto=True,
    ),
    streamed_lenet("streamed", "50k", "LeNet finetune, 8 MB budget: images streamed"),
    streamed_lenet("streamed-5k", "5k", "the same on a tenth of the images"),
    streamed_lenet("streamed-4w", "50k", "streamed by 4 loader workers (an 8-core machine's)", workers=4),
    lite0(
        "lite0-frozen-1k",
        "1k",
        "frozen",
        "features_in_memory",
        "EfficientNet-Lite0 frozen (the CPU default for photos) on 1,200 images: its fixed costs",
    ),
    lite0(
        "lite0-streamed-5k",
        "5k",
        "finetune",
        "images_streamed",
        "EfficientNet-Lite0 finetune at 224×224, 256 MB budget (0.9 GB decoded): streamed",
        budget=256,
    ),
    lite0(
        "lite0-streamed",
        "50k",
        "finetune",
        "images_streamed",
        "EfficientNet-Lite0 finetune at 224×224: 9 GB decoded > 1 GB default budget, streamed",
    ),
)


def lenet_weights(work: Path) -> Path:
    """A LeNet ``state_dict`` of seeded random weights: makes ``--mode frozen`` accept LeNet."""
    path = work / "lenet-random-weights.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(build_backbone("lenet").module.state_dict(), path)
    return path


def command_for(run: Run, folders: dict[str, tuple[Path, Path]], out: Path, config: Path, weights: Path) -> list[str]:
    source, target = folders[run.folder]
    command = [sys.executable, "-m", "service.cli", "train", "--source", str(source), "--target", str(target)]
    command += ["--out", str(out), "--iterations", str(run.iterations), "--config", str(config)]
    if not run.auto:
        command += ["--backbone", run.backbone]
    if run.pretrained_lenet:
        command += ["--backbone-weights", str(weights)]
    if run.mode:
        command += ["--mode", run.mode]
    if run.batch_size:
        command += ["--batch-size", str(run.batch_size)]
    return command


def bench_run(run: Run, work: Path, folders: dict[str, tuple[Path, Path]], weights: Path) -> dict[str, Any]:
    folder = work / "runs" / run.name
    shutil.rmtree(folder, ignore_errors=True)
    cache = folder / "feature-cache"
    cache.mkdir(parents=True)
    settings: dict[str, Any] = {"feature_cache": str(cache)}
    if run.memory_budget_mb is not None:
        settings["memory_budget_mb"] = run.memory_budget_mb
    if run.loader_workers is not None:
        settings["loader_workers"] = run.loader_workers
    config = folder / "config.json"
    config.write_text(json.dumps(settings, indent=2))
    command = command_for(run, folders, folder / "out", config, weights)
    env = {**os.environ, "METAH_FEATURE_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    print(f"[{run.name}] {shlex.join(command)}", flush=True)
    measured = run_measured(command, env, folder / "train.log")
    metrics_path = folder / "out" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    samples = measured.samples
    peak = max(samples, key=lambda s: s.tree)
    mib = 1024.0
    tree_peak_mb, trainer_peak_mb = peak.tree / mib, measured.trainer_max_rss_kib / mib
    phase = next((line for at, line in reversed(measured.log_lines) if at <= peak.seconds and line.strip()), "")
    result = {
        **asdict(run),
        "budget_mb": run.budget_mb,
        "command": shlex.join(["python", *command[1:]]).replace(str(work), "$WORK"),
        "config_file": {k: v.replace(str(work), "$WORK") if isinstance(v, str) else v for k, v in settings.items()},
        "exit_code": measured.exit_code,
        "wall_seconds": round(measured.wall_seconds, 1),
        "batches": metrics.get("batches"),
        "batches_as_expected": metrics.get("batches") == run.expect,
        "backbone_used": metrics.get("backbone"),
        "mode_used": metrics.get("mode"),
        "source_images": metrics.get("source_images"),
        "target_images": metrics.get("target_images"),
        "train_seconds": metrics.get("train_seconds"),
        "trainer_peak_rss_mb": round(trainer_peak_mb, 1),
        "tree_peak_mb": round(tree_peak_mb, 1),
        "tree_peak_rss_sum_mb": round(max(s.tree_rss for s in samples) / mib, 1),
        "tree_peak_pss_sum_mb": round(max(s.tree_pss for s in samples) / mib, 1),
        "largest_worker_private_mb": round(max(s.largest_worker_private for s in samples) / mib, 1),
        "most_processes": max(s.processes for s in samples),
        "peak_at_seconds": peak.seconds,
        "last_log_line_before_peak": phase,
        "bound_mb": run.bound_mb,
        "bound_held": measured.exit_code == 0 and max(tree_peak_mb, trainer_peak_mb) <= run.bound_mb,
        "samples": len(samples),
        "mean_sample_interval_seconds": round(samples[-1].seconds / max(1, len(samples) - 1), 3),
        "trace": trace(samples),
        "log": [f"[{at:.1f}s] {line}" for at, line in measured.log_lines if line.strip() and line[0] != " "][-30:],
    }
    print(
        f"[{run.name}] exit {measured.exit_code}, {result['batches']}, trainer peak {trainer_peak_mb:.0f} MB, "
        f"tree peak {tree_peak_mb:.0f} MB (bound {run.bound_mb}), {result['wall_seconds']:.0f} s",
        flush=True,
    )
    shutil.rmtree(cache, ignore_errors=True)  # hundreds of thousands of small files: not worth keeping
    return result


# ----------------------------------------------------------------------------------------------- report


def git_state() -> dict[str, Any]:
    def git(*args: str) -> list[str]:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return out.splitlines()

    paths = ["model", "service/cli.py", "scripts/bench_memory.py"]
    changed = git("diff", "--name-only", "HEAD", "--", *paths) + git(
        "ls-files", "--others", "--exclude-standard", *paths
    )
    return {"commit": git("rev-parse", "HEAD")[0], "measured_files_differing_from_commit": sorted(changed)}


def growth_table(runs: list[dict[str, Any]]) -> list[str]:
    """The same run on 5,000 and on 50,000 source images: what the tenfold folder adds to the peak."""
    by_name = {r["name"]: r for r in runs}
    pairs = [(name, f"{name}-5k") for name in by_name if f"{name}-5k" in by_name]
    if not pairs:
        return []
    lines = [
        "",
        "Folder size: the same run on a tenth of the images (peaks of the larger of trainer and tree, MB).",
        "",
        "| run | batches | 6,000 images | 60,000 images | difference | per 1,000 images |",
        "|---|---|---|---|---|---|",
    ]
    for large, small in pairs:
        a, b = by_name[small], by_name[large]
        peak_a = max(a["tree_peak_mb"], a["trainer_peak_rss_mb"])
        peak_b = max(b["tree_peak_mb"], b["trainer_peak_rss_mb"])
        images = (b["source_images"] + b["target_images"]) - (a["source_images"] + a["target_images"])
        lines.append(
            f"| {large} | {b['batches']} | {peak_a:.0f} | {peak_b:.0f} | {peak_b - peak_a:+.0f} "
            f"| {1000 * (peak_b - peak_a) / images:+.1f} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    m, data, git = report["machine"], report["data"], report["git"]
    differing = git["measured_files_differing_from_commit"]
    allowances = ", ".join(f"{name} {mb} MB" for name, mb in report["bound"]["allowance_mb"].items())
    lines = [
        "# Peak memory of `metah train` on 50,000 generated images",
        "",
        f"Command: `{report['command']}`  ",
        f"Git commit: `{git['commit']}`" + (f" (differing: {', '.join(differing)})" if differing else "") + "  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['cpus_available']} available), {m['memory_gib']} GiB; "
        f"Python {m['python']}, torch {m['torch']}; shared with other jobs (load average "
        f"{report['load_average_at_start']} at start, {report['load_average_at_end']} at end): that changes the "
        "times, not the memory.  ",
        f"Images: {data['folders']['50k']} 64×64 PNGs (labelled source + unlabelled target; "
        f"{data['bytes_on_disk'] / 2**20:.0f} MB on disk; 10 classes of seeded random shapes, all distinct); the "
        f"5k and 1k folders are {data['folders']['5k']} and {data['folders']['1k']} of them.",
        "",
        f"**Bound**: the process tree of a run (the trainer and its `DataLoader` workers) stays under "
        f"`memory_budget_mb` + an allowance per backbone ({allowances}). {report['bound_reason']}",
        "",
        "| run | images (src + tgt) | backbone, mode | batches | budget MB | steps × batch | trainer peak MB "
        "| tree peak MB | Σ RSS MB | Σ PSS MB | processes | bound MB | held | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        held = "yes" if r["bound_held"] else "**NO**"
        batches = r["batches"] if r["batches_as_expected"] else f"**{r['batches']}** (expected {r['expect']})"
        images = f"{r['source_images']:,} + {r['target_images']:,}" if r["source_images"] is not None else "-"
        lines.append(
            f"| {r['name']} | {images} | {r['backbone_used']}, {r['mode_used']} | {batches} | {r['budget_mb']} "
            f"| {r['iterations']} × {r['batch_size'] or 64} | {r['trainer_peak_rss_mb']:.0f} | {r['tree_peak_mb']:.0f} "
            f"| {r['tree_peak_rss_sum_mb']:.0f} | {r['tree_peak_pss_sum_mb']:.0f} | {r['most_processes']} "
            f"| {r['bound_mb']} | {held} | {r['wall_seconds']:.0f} |"
        )
    lines += growth_table(report["runs"])
    lines += [
        "",
        "- **trainer peak**: the kernel's `ru_maxrss` of the `metah train` process (from `wait4`; the larger of "
        "its own peak and any reaped worker's).",
        "- **tree peak**: the largest, over samples every 0.2 s, of the trainer's resident set plus its workers' "
        "private pages (`Private_Clean + Private_Dirty`): each page of the tree counted once (forked workers share "
        "their parent's pages until they write them). The bound is checked on the larger of the two peaks.",
        "- **Σ RSS**: the largest sum of the tree's resident sets, counting every shared page once per process "
        "(a forked worker's resident set includes its parent's pages): an upper bound, far above the truth.",
        "- **Σ PSS**: the largest sum of proportional sets; pages shared with *any* process (here other jobs' "
        "Python and torch) are split, so it can be below the truth.",
        "- Every run starts with an empty feature cache (the first run on a folder: features computed, not read).",
        "- LeNet frozen runs load a file of *random* LeNet weights (a weights file makes a backbone count as "
        "pretrained, model/choice.py): the features mean nothing, but they are computed, stored and batched like "
        "real ones. EfficientNet-Lite0 costs about 15 ms per image and view on this CPU, too slow for 60,000.",
        "",
        "Runs:",
        "",
    ]
    for r in report["runs"]:
        lines.append(f"- **{r['name']}**: {r['note']}. `{r['command']}` with config `{json.dumps(r['config_file'])}`")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench-memory", help="images, runs, logs")
    parser.add_argument("--images", type=int, default=50_000, help="labelled source images")
    parser.add_argument("--targets", type=int, default=10_000, help="unlabelled target images")
    parser.add_argument("--runs", default=",".join(r.name for r in RUNS), help="comma-separated run names")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    names = args.runs.split(",")
    unknown = set(names) - {r.name for r in RUNS}
    if unknown:
        parser.error(f"unknown run(s): {', '.join(sorted(unknown))}")
    chosen = [r for r in RUNS if r.name in names]

    load_start = [round(x, 2) for x in os.getloadavg()]
    work = args.work.resolve()
    data = work / "data"
    started = time.perf_counter()
    source_info = generate_folder(data / "source", args.images, seed=1, labelled=True)
    target_info = generate_folder(data / "target", args.targets, seed=2, labelled=False)
    counts = {"50k": (args.images, args.targets), "5k": (args.images // 10, args.targets // 10)}
    counts["1k"] = (args.images // 50, args.targets // 50)
    folders = {"50k": (data / "source", data / "target")}
    for name in ("5k", "1k"):
        folders[name] = (data / f"source-{name}", data / f"target-{name}")
        linked_subset(data / "source", folders[name][0], counts[name][0], labelled=True)
        linked_subset(data / "target", folders[name][1], counts[name][1], labelled=False)
    print(f"images ready in {time.perf_counter() - started:.0f} s under {data}", flush=True)
    weights = lenet_weights(work)
    report: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "git": git_state(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_at_start": load_start,
        "data": {
            "folders": {name: f"{s:,} + {t:,}" for name, (s, t) in counts.items()},
            "bytes_on_disk": source_info["bytes"] + target_info["bytes"],
            "classes": list(CLASSES),
            "side": SIDE,
        },
        "bound": {"allowance_mb": ALLOWANCE_MB, "default_budget_mb": BUDGET_MB},
        "bound_reason": BOUND_REASON,
        "trace_columns": list(TRACE_COLUMNS),
        "runs": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for run in chosen:  # the report is rewritten after every run: a long benchmark keeps what it measured
        report["runs"].append(bench_run(run, work, folders, weights))
        report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
