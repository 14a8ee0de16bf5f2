"""The OpenMP policy relies on per-thread nthreads-var; the readers-writer lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import faiss
import numpy as np
import pytest

from index import HashIndex, IndexBusyError
from index.threads import ReadWriteLock, ThreadPolicy, omp_threads


def test_omp_thread_count_is_per_thread_and_restored() -> None:
    seen: dict[str, int] = {}
    inside = threading.Event()
    release = threading.Event()

    def single_query_thread() -> None:
        seen["before"] = faiss.omp_get_max_threads()  # the process default, not the main thread's 3
        with omp_threads(1):
            seen["inside"] = faiss.omp_get_max_threads()
            inside.set()
            release.wait(10)
        seen["after"] = faiss.omp_get_max_threads()

    before = faiss.omp_get_max_threads()
    with omp_threads(3):
        thread = threading.Thread(target=single_query_thread)
        thread.start()
        assert inside.wait(10)
        assert faiss.omp_get_max_threads() == 3  # not changed by the other thread's setting
        release.set()
        thread.join()
    assert faiss.omp_get_max_threads() == before
    assert seen["inside"] == 1 and seen["after"] == seen["before"] != 3


def test_policy() -> None:
    policy = ThreadPolicy(batch_threads=4)
    assert policy.threads_for(1) == 1 and policy.threads_for(2) == 4
    with pytest.raises(ValueError, match=">= 1"), omp_threads(0):
        pass


def test_writer_waits_for_readers_and_blocks_new_ones() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    reader_in = threading.Event()

    def reader(name: str, hold: float) -> None:
        with lock.read():
            order.append(f"{name} in")
            reader_in.set()
            time.sleep(hold)
            order.append(f"{name} out")

    def writer() -> None:
        with lock.write():
            order.append("writer")

    first = threading.Thread(target=reader, args=("r1", 0.2))
    first.start()
    assert reader_in.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.05)  # the writer is waiting now
    second = threading.Thread(target=reader, args=("r2", 0))
    second.start()
    for t in (first, w, second):
        t.join(5)
    assert order == ["r1 in", "r1 out", "writer", "r2 in", "r2 out"]


def test_a_reader_that_may_not_block_is_refused_while_a_writer_holds_or_waits() -> None:
    lock = ReadWriteLock()
    with lock.read(blocking=False), lock.read(blocking=False):  # readers share it
        pass
    writing, release = threading.Event(), threading.Event()

    def writer() -> None:
        with lock.write():
            writing.set()
            release.wait(5)

    with lock.read():  # a writer waiting for this reader blocks new readers too
        waiting = threading.Thread(target=writer)
        waiting.start()
        deadline = time.monotonic() + 5
        while not lock._writers_waiting:  # the state this test is about
            assert time.monotonic() < deadline, "the writer never waited"
            time.sleep(0.001)
        with pytest.raises(IndexBusyError), lock.read(blocking=False):
            pass
    assert writing.wait(5)
    with pytest.raises(IndexBusyError), lock.read(blocking=False):  # a writer holds it
        pass
    release.set()
    waiting.join(5)
    with lock.read(blocking=False):  # free again
        pass


def test_a_search_that_may_not_wait_is_refused_while_a_write_holds_the_index() -> None:
    index = HashIndex(64, "v1")
    codes = np.random.default_rng(0).integers(0, 256, (20, 8), dtype=np.uint8)
    index.add(np.arange(20), codes, "photo")
    expected = index.search(codes[3], 5)[0]
    with index._lock.write():  # a write in progress, held open
        refused: list[Exception] = []
        thread = threading.Thread(target=lambda: _search_into(index, codes[3], refused))
        thread.start()
        thread.join(5)
        assert [type(error) for error in refused] == [IndexBusyError]
    hits = index.search(codes[3], 5, wait=False)[0]
    assert hits.ids.tolist() == expected.ids.tolist() and hits.ids[0] == 3


def _search_into(index: HashIndex, query: np.ndarray, errors: list[Exception]) -> None:
    try:
        index.search(query, 5, wait=False)
    except IndexBusyError as exc:
        errors.append(exc)


def test_index_package_never_imports_torch() -> None:
    code = "import sys, index, index.synthetic; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
