"""Real hash codes at index-benchmark scale: every digit image in ``data/digits`` (MNIST test, USPS, MNIST-M),
each under many random affine distortions (the training augmentation), through a trained encoder artefact.

22,298 images give only about 1,000 distinct 64-bit codes, far too few to load a 1M-code index; the
distortions make 1M codes with the clustering a real model produces (many exact duplicates, tight classes),
which synthetic codes do not have. Rows are shuffled, so ``scripts/bench_index.py --codes`` (whose queries are
the last rows) gets queries from every domain.

    .venv/bin/python -m scripts.real_codes --model var/demo-model/model.pt --count 1001k --out var/real-codes-1M.npy
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from index import pack_codes
from model.augment import random_affine
from model.export import load_encoder
from model.preprocess import to_model_input
from workbench.datasets import DIGIT_DOMAINS, load_digits
from workbench.sizes import parse_size


def digit_pixels(size: tuple[int, int]) -> torch.Tensor:
    """Every shipped digit as uint8 ``[N, 3, H, W]``, resized like the service does (PIL bilinear, RGB)."""
    images = []
    for name in DIGIT_DOMAINS:
        for array in load_digits(name).images:
            rgb = Image.fromarray(array).convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            images.append(np.asarray(rgb))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("var/demo-model/model.pt"))
    parser.add_argument("--count", default="1M", help="codes to write, e.g. 100k or 1M")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help=".npy of packed uint8 codes [count, bits/8]")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    encoder = load_encoder(args.model)
    base = digit_pixels(encoder.input_size)
    count = parse_size(args.count)
    codes = np.empty((count, encoder.bits // 8), np.uint8)
    order = np.random.default_rng(args.seed).integers(0, base.shape[0], size=count)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, count, args.batch):
            pixels = to_model_input(base[torch.from_numpy(order[start : start + args.batch])])
            codes[start : start + args.batch] = pack_codes(encoder.module(random_affine(pixels)).numpy(), encoder.bits)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, codes[np.random.default_rng(args.seed + 1).permutation(count)])
    distinct = np.unique(codes.view(np.dtype((np.void, codes.shape[1])))).shape[0]
    print(
        f"{count} codes ({distinct} distinct) from {base.shape[0]} digit images with model "
        f"{encoder.metadata['model_version']} in {time.perf_counter() - started:.0f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
