"""Counts written the short way (``100k``, ``1M``), as benchmarks take and print them."""

from __future__ import annotations


def parse_size(text: str) -> int:
    """``100k`` → 100_000, ``1M`` → 1_000_000."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_label(n: int) -> str:
    """The inverse of :func:`parse_size` where it is exact: 100_000 → ``100k``; other counts as they are."""
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1_000}k" if n % 1_000 == 0 else str(n)
