"""Concurrent searches during writes never fail and never see half a write (swaps: tests/service/test_serving.py)."""

from __future__ import annotations

import numpy as np

from index import HashIndex, IndexOptions
from index.synthetic import random_codes
from tests.concurrency import run_threads

BATCH = 64


def test_readers_never_see_a_half_added_batch() -> None:
    """Writers add and remove batches of BATCH copies of a probe code; readers must count 0 mod BATCH."""
    probe = np.full((1, 8), 0xA5, np.uint8)
    index = HashIndex(64, "m1", IndexOptions(batch_threads=2))
    background = random_codes(50_000, 64, seed=1)
    background[(background == 0xA5).all(axis=1)] ^= 1
    index.add(np.arange(50_000) + 10**6, background, "d")
    counter = iter(range(10**9))
    seen: list[int] = []

    def write() -> None:
        k = next(counter)
        ids = np.arange(k * BATCH, (k + 1) * BATCH)
        index.add(ids, np.repeat(probe, BATCH, axis=0), "d" if k % 3 else "e")
        if k % 8:  # most batches leave again, so the probe's bucket (and each read) stays small
            index.remove(ids)

    def read_range() -> None:
        n = len(index.range_search(probe, 0)[0])
        seen.append(n)
        assert n % BATCH == 0, n

    def read_knn() -> None:
        hits = index.search(np.repeat(probe, 3, axis=0), 5 * BATCH)  # a batch: several OpenMP threads
        for h in hits:
            assert int((h.distances == 0).sum()) % BATCH == 0

    def read_single() -> None:
        h = index.search(probe, BATCH + 1, domain="d")[0]
        assert len(h) == BATCH + 1

    errors = run_threads(
        [write, write, read_range, read_range, read_knn, read_single], seconds=1.5, until=lambda: len(seen) > 10
    )
    assert not errors, errors[:3]
    assert len(seen) > 10 and max(seen) > 0
