"""Convert the shared raw digit files into the compact arrays committed under ``data/digits/``.

Run once by a maintainer (it needs ``h5py`` and the ``shared/data`` folder); the product only reads the
outputs. Every output is a compressed ``.npz`` with ``images`` uint8 ``[N, H, W]`` (grey) or
``[N, H, W, 3]`` (RGB) and ``labels`` uint8 ``[N]`` (digit 0..9). Pixel values are not resampled.

    .venv/bin/python scripts/prepare_digits.py --shared ../shared/data --out data/digits
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">u4").astype(int)
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(tuple(dims))


def prepare_mnist(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(shared / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared / "mnist" / "t10k-labels-idx1-ubyte.gz")
    return images, labels


def prepare_usps(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(shared / "usps" / "usps.h5", "r") as h5:
        data = np.concatenate([h5["train/data"][:], h5["test/data"][:]])
        target = np.concatenate([h5["train/target"][:], h5["test/target"][:]])
    images = np.clip(np.rint(data.reshape(-1, 16, 16) * 255.0), 0, 255).astype(np.uint8)
    return images, target.astype(np.uint8)


def prepare_mnist_m(shared: Path, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A slice of MNIST-M; image i derives from MNIST test image i, so keep the range disjoint from sources."""
    with np.load(shared / "mnist_m" / "mnist_m_test.npz") as npz:
        return npz["images"][start : start + count], npz["labels"][start : start + count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("data/digits"))
    parser.add_argument("--mnist-m-start", type=int, default=6000)
    parser.add_argument("--mnist-m-count", type=int, default=3000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    outputs = {
        "mnist_test": prepare_mnist(args.shared),
        "usps": prepare_usps(args.shared),
        "mnist_m": prepare_mnist_m(args.shared, args.mnist_m_start, args.mnist_m_count),
    }
    for name, (images, labels) in outputs.items():
        np.savez_compressed(args.out / f"{name}.npz", images=images, labels=labels)
        print(f"{name}: images {images.shape} {images.dtype}, labels {np.bincount(labels).tolist()}")


if __name__ == "__main__":
    main()
