"""Synthetic packed codes for tests and benchmarks (until real encoder codes exist).

Random bits are the worst case for an approximate index and unlike what a hashing model produces. Codes of a
trained model cluster by class: :func:`clustered_codes` draws ``classes`` prototype codes and flips each bit of
each item independently, with a per-(class, bit) rate drawn uniformly from ``flip_rate`` (5–15 % by default),
which mimics confident and unsure bits of a real encoder.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from index.codes import Codes, check_bits


def random_codes(n: int, bits: int, seed: int = 0) -> Codes:
    """Uniformly random packed codes ``uint8 [n, bits // 8]``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, check_bits(bits) // 8), dtype=np.uint8)


def clustered_codes(
    n: int,
    bits: int,
    seed: int = 0,
    *,
    classes: int = 10,
    flip_rate: tuple[float, float] = (0.05, 0.15),
    chunk: int = 262_144,
) -> tuple[Codes, npt.NDArray[np.int64]]:
    """Class-clustered packed codes.

    Returns:
        ``(codes uint8 [n, bits // 8], labels int64 [n])``.
    """
    check_bits(bits)
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 2, size=(classes, bits), dtype=np.uint8).astype(bool)
    rates = rng.uniform(flip_rate[0], flip_rate[1], size=(classes, bits)).astype(np.float32)
    labels = rng.integers(0, classes, size=n).astype(np.int64)
    codes = np.empty((n, bits // 8), np.uint8)
    for start in range(0, n, chunk):
        part = labels[start : start + chunk]
        flips = rng.random((part.shape[0], bits), dtype=np.float32) < rates[part]
        codes[start : start + chunk] = np.packbits(prototypes[part] ^ flips, axis=1, bitorder="big")
    return codes, labels
