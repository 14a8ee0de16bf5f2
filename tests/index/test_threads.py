"""The OpenMP policy relies on per-thread nthreads-var; the readers-writer lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import faiss
import pytest

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


def test_index_package_never_imports_torch() -> None:
    code = "import sys, index, index.synthetic; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
