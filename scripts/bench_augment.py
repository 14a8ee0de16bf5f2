"""What the finetune mode's photo augmentation costs per training step: one batch of views rendered image by image
(``photo_augment`` on each image: how ``InMemoryImages`` rendered every batch before, and still does on a CPU)
against the same views rendered together (``model.augment.render_views``: what it does on a GPU now; equal to
the bit on a CPU, within float rounding on a GPU), and, on a GPU, one EfficientNet-Lite0 training step (forward
and backward in bfloat16, as the finetune mode trains) for scale.

Each figure is the median of ``--repeats`` timed calls after two warm-ups, on one torch thread on a CPU and
synchronised on a GPU; every device that is present is measured in the same run.

    .venv/bin/python -m scripts.bench_augment                          # here: CPU
    python3 -m scripts.bench_augment --out OUT/augment                 # on a lent GPU machine: CPU and GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from model.augment import draw_photo_view, photo_augment, render_views
from model.backbones import build_backbone
from model.config import TrainConfig
from model.factory import build_network
from workbench.machine import cpu_name, git_commit
from workbench.output import generated_by, write_results


def median_ms(call: Callable[[], object], device: torch.device, repeats: int) -> float:
    def once() -> float:
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - started) * 1e3

    for _ in range(2):
        once()
    return statistics.median(once() for _ in range(repeats))


def augmentation(device: torch.device, batch: int, size: int, repeats: int) -> dict[str, float]:
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed) for seed in range(batch)]

    def one_by_one() -> torch.Tensor:
        return torch.stack([photo_augment(image, g) for image, g in zip(images, generators(), strict=True)])

    def together() -> torch.Tensor:
        return render_views(images, [draw_photo_view(size, size, g) for g in generators()])

    difference = float((one_by_one() - together()).abs().max())
    if difference > 1e-5:
        raise AssertionError(f"batched views differ from image-by-image views on {device} by {difference}")
    result = {"max_abs_difference": difference, "image_by_image_ms": median_ms(one_by_one, device, repeats)}
    result["batched_ms"] = median_ms(together, device, repeats)
    result["speedup"] = result["image_by_image_ms"] / result["batched_ms"]
    return result


def training_step_ms(device: torch.device, batch: int, size: int, repeats: int) -> float:
    """Forward and backward of EfficientNet-Lite0 + heads on ``batch`` images, bfloat16 autocast (no optimiser)."""
    config = TrainConfig(backbone="efficientnet_lite0", mode="finetune")
    net = build_network(config, build_backbone("efficientnet_lite0"), 7).to(device)
    net = net.to(memory_format=torch.channels_last)
    images = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(images)
        out.codes.float().square().mean().backward()

    return median_ms(step, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128, help="images per step: 64 source + 64 target")
    parser.add_argument("--size", type=int, default=224, help="EfficientNet-Lite0's input size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/augment/results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite OUT.md from OUT.json")
    args = parser.parse_args()
    if args.report_only:
        args.out.with_suffix(".md").write_text(report(json.loads(args.out.with_suffix(".json").read_text())))
        return
    torch.set_num_threads(1)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    measured: dict[str, Any] = {}
    for device in devices:
        measured[device.type] = augmentation(device, args.batch, args.size, args.repeats)
        if device.type == "cuda":
            measured[device.type]["training_step_ms"] = training_step_ms(device, args.batch, args.size, args.repeats)
        print(device, measured[device.type], flush=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    results = {
        "command": " ".join(["python -m scripts.bench_augment", *sys.argv[1:]]),
        "machine": {
            "commit": git_commit(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "cpu": cpu_name() + (f", {gpu}" if gpu else ""),
            "torch": torch.__version__,
        },
        "batch": args.batch,
        "size": args.size,
        "repeats": args.repeats,
        "devices": measured,
    }
    write_results(args.out, results, report(results))


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Photo augmentation per training step: image by image against batched",
        "",
        f"{generated_by(results)} torch {results['machine']['torch']}. One step's {results['batch']} views at "
        f"{results['size']}×{results['size']} (random resized crop, flip, colour jitter), median of "
        f"{results['repeats']} timed calls; CPU on one torch thread. *Largest difference*: between the two "
        "renderings of the same views, pixel values in [0, 1] (0: equal to the bit). The product renders together "
        "on a GPU and image by image on a CPU (`model.augment.apply_photo_views`).",
        "",
        "| device | image by image (ms) | together (ms) | speed-up | largest difference | Lite0 training step, "
        "bf16 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for device, m in results["devices"].items():
        step = f"{m['training_step_ms']:.1f}" if "training_step_ms" in m else ""
        lines.append(
            f"| {device} | {m['image_by_image_ms']:.1f} | {m['batched_ms']:.1f} | {m['speedup']:.1f}× | "
            f"{m['max_abs_difference']:.1e} | {step} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
