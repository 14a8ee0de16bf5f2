"""Which of frozen EfficientNet-Lite0's features carry photo labels over to cartoons and sketches? A linear probe.

The plain image of every PACS photo, cartoon and sketch goes once through Lite0 (ImageNet weights, the product's
preprocessing); five poolings of two layers are kept: the product's features (the head convolution's 1,280
channels, average-pooled), the same channels max- and GeM-pooled (p = 3), and the last inverted-residual block's
320 channels before that convolution, average- and max-pooled (``efficientnet_lite0_blocks`` is the first of
those). For each, a softmax regression is trained on the standardised photo features (all photos, labels used)
and its accuracy read on every cartoon and every sketch. No hashing, no adaptation: a quick look at which
features transfer, the reason ``scripts/bench.py`` was run with ``--photo-backbone efficientnet_lite0_blocks``.

    .venv/bin/python -m scripts.probe_features --pacs ../shared/data/pacs \\
        --out benchmarks/retrieval-lite0-blocks/probe

Features are kept in ``--work`` (one ``.npz`` per domain; a domain already there is not computed again).
Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.efficientnet import EfficientNet

from model.backbones import build_backbone
from model.data import list_labelled_folder
from model.normalize import Normalize
from model.preprocess import decode_image
from workbench.machine import machine
from workbench.output import generated_by, write_results

DOMAINS = ("photo", "cartoon", "sketch")
POOLINGS = ("head_avg", "head_max", "head_gem", "blocks_avg", "blocks_max")


def pooled_features(head: torch.Tensor, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """The five poolings of one batch: ``head`` ``[N, 1280, h, w]`` (after the head convolution and its
    activation), ``blocks`` ``[N, 320, h, w]`` (the last block's output) → ``[N, channels]`` each."""
    return {
        "head_avg": head.mean((2, 3)),
        "head_max": head.amax((2, 3)),
        "head_gem": head.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3),
        "blocks_avg": blocks.mean((2, 3)),
        "blocks_max": blocks.amax((2, 3)),
    }


def extract(folder: Path, out: Path) -> tuple[str, int]:
    """Every image of one labelled domain folder through Lite0, one at a time on one thread → ``out`` (npz)."""
    torch.set_num_threads(1)
    backbone = build_backbone("efficientnet_lite0")
    module = backbone.module.eval()
    assert isinstance(module, EfficientNet)
    normalize = Normalize(backbone.mean, backbone.std)
    files = list_labelled_folder(folder, what=folder.name)
    grabbed: list[torch.Tensor] = []
    module.blocks[-1].register_forward_hook(lambda _module, _inputs, output: grabbed.append(output))
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in POOLINGS}
    with torch.no_grad():
        for path in files.paths:
            pixels = torch.from_numpy(decode_image(path.read_bytes(), backbone.input_size)).permute(2, 0, 1)
            head = module.forward_features(normalize(pixels[None].float().div(255.0)))
            for name, value in pooled_features(head, grabbed.pop()).items():
                rows[name].append(value)
    arrays = {name: torch.cat(values).numpy() for name, values in rows.items()}
    np.savez(out, labels=files.labels.numpy(), **arrays)  # type: ignore[arg-type]
    return folder.name, len(files.paths)


def features_by_domain(
    extract_domain: Callable[[Path, Path], tuple[str, int]], pacs: Path, work: Path, processes: int
) -> dict[str, dict[str, np.ndarray]]:
    """Every domain's arrays from ``work/<domain>.npz``, written first by ``extract_domain(folder, npz)`` (in
    ``processes`` spawned processes) for the domains not there yet."""
    work.mkdir(parents=True, exist_ok=True)
    todo = [domain for domain in DOMAINS if not (work / f"{domain}.npz").exists()]
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        folders, outs = [pacs / d for d in todo], [work / f"{d}.npz" for d in todo]
        for domain, count in pool.map(extract_domain, folders, outs):
            print(f"features: {domain} ({count} images)", flush=True)
    return {domain: dict(np.load(work / f"{domain}.npz")) for domain in DOMAINS}


def probe(
    train: np.ndarray, labels: np.ndarray, tests: dict[str, tuple[np.ndarray, np.ndarray]], *, steps: int = 300
) -> dict[str, float]:
    """Accuracy on each of ``tests`` (features, labels) of a softmax regression trained on ``train``, all
    standardised with ``train``'s mean and std (Adam, learning rate 10⁻³, weight decay 10⁻⁴, seed 0)."""
    x = torch.from_numpy(train).float()
    mean, std = x.mean(0), x.std(0) + 1e-6
    y = torch.from_numpy(labels).long()
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    optimiser = torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(layer((x - mean) / std), y).backward()
        optimiser.step()
    accuracy = {}
    with torch.no_grad():
        for name, (features, truth) in tests.items():
            guess = layer((torch.from_numpy(features).float() - mean) / std).argmax(1)
            accuracy[name] = float((guess == torch.from_numpy(truth)).float().mean())
    return accuracy


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Linear probe: frozen EfficientNet-Lite0 features, photos → cartoons and sketches",
        "",
        f"{generated_by(results)} A softmax regression on the standardised "
        "features of every photo, accuracy on every image of the other domain (7 classes: chance 1/7).",
        "",
        "| features | channels | cartoon accuracy | sketch accuracy |",
        "|---|---:|---:|---:|",
    ]
    for name, row in results["probe"].items():
        lines.append(f"| {name} | {row['channels']} | {row['cartoon']:.3f} | {row['sketch']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pacs", type=Path, default=Path("../shared/data/pacs"))
    parser.add_argument("--work", type=Path, default=Path("var/probe"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/retrieval-lite0-blocks/probe"))
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    data = features_by_domain(extract, args.pacs, args.work, args.processes)
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "python -m scripts.probe_features " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "images": {domain: len(data[domain]["labels"]) for domain in DOMAINS},
        "probe": {},
    }
    for name in POOLINGS:
        tests = {domain: (data[domain][name], data[domain]["labels"]) for domain in ("cartoon", "sketch")}
        accuracy = probe(data["photo"][name], data["photo"]["labels"], tests)
        results["probe"][name] = {"channels": int(data["photo"][name].shape[1]), **accuracy}
    write_results(args.out, results, report(results))


if __name__ == "__main__":
    main()
