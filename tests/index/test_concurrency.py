"""Concurrent searches during writes and swaps never fail and never see half a write."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np

from index import ActiveIndex, CodeSpaceError, HashIndex, IndexOptions
from index.synthetic import random_codes

BATCH = 64


def run_threads(workers: list[Callable[[], None]], seconds: float) -> list[BaseException]:
    """Run workers in loops for ``seconds``; return what they raised."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(work: Callable[[], None]) -> None:
        try:
            while not stop.is_set():
                work()
        except BaseException as error:  # reported to the test
            errors.append(error)

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    return errors


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
        start = next(counter) * BATCH
        ids = np.arange(start, start + BATCH)
        index.add(ids, np.repeat(probe, BATCH, axis=0), "d" if start % 3 else "e")
        if start % 2:
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

    errors = run_threads([write, write, read_range, read_range, read_knn, read_single], seconds=1.5)
    assert not errors, errors[:3]
    assert len(seen) > 10 and max(seen) > 0


def test_swap_during_searches_and_background_rebuild() -> None:
    old = HashIndex(64, "m1")
    old.add(np.arange(2000), random_codes(2000, 64, seed=2), "d")
    active = ActiveIndex(old)
    new_codes = random_codes(3000, 128, seed=3)
    models: set[str] = set()

    def search() -> None:
        index = active.current  # one index per request
        query = np.zeros((1, index.bits // 8), np.uint8)
        hits = index.search(query, 10, model_version=index.model_version)[0]
        assert len(hits) == 10
        models.add(index.model_version)

    def write() -> None:
        with contextlib.suppress(CodeSpaceError):  # after the swap the caller re-encodes with the new model
            active.add([int(time.monotonic_ns())], random_codes(1, 64), "d", model_version="m1")

    def rebuild_and_swap() -> None:
        if active.current.model_version == "m2":
            time.sleep(0.01)
            return
        new = HashIndex.build_from_batches([(np.arange(3000), new_codes, "d")], bits=128, model_version="m2")

        def catch_up(index: HashIndex) -> None:  # changes made while building, re-encoded
            index.add([10**6], new_codes[:1], "d")

        active.swap(new, catch_up=catch_up)

    errors = run_threads([search, search, write, rebuild_and_swap], seconds=1.0)
    assert not errors, errors[:3]
    assert active.current.model_version == "m2" and len(active.current) == 3001
    assert models == {"m1", "m2"}
