"""OpenMP thread policy for FAISS calls, and a readers–writer lock.

OpenMP policy
-------------
A single query runs on one OpenMP thread (no fork/join overhead, and concurrent requests each keep a core);
a batch of queries uses ``batch_threads`` threads. The policy is applied around every FAISS call by
:func:`omp_threads`, in the *calling* thread, and restored afterwards.

``omp_set_num_threads`` sets the ``nthreads-var`` ICV of the calling thread's implicit task, not of the
process: in libgomp (bundled with the faiss-cpu wheels) and in LLVM's libomp a thread that never called it
keeps the process default, and a call in one Python thread does not change the thread count of a search
running in another. ``tests/index/test_threads.py`` checks this, so a FAISS build where it stops holding
fails the tests rather than silently oversubscribing. No process-wide lock is therefore needed, and
concurrent searches stay concurrent (FAISS releases the GIL during search).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import faiss

from index.errors import IndexBusyError


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` OpenMP threads in the calling thread, then restore the previous count."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    previous = faiss.omp_get_max_threads()
    if previous == n:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


@dataclass(frozen=True)
class ThreadPolicy:
    """How many OpenMP threads a FAISS call gets.

    Attributes:
        batch_threads: threads for a call with more than one query.
    """

    batch_threads: int

    def threads_for(self, n_queries: int) -> int:
        """1 for a single query, ``batch_threads`` otherwise."""
        return 1 if n_queries <= 1 else self.batch_threads

    @contextmanager
    def applied(self, n_queries: int) -> Iterator[None]:
        """:func:`omp_threads` with the count for ``n_queries``."""
        with omp_threads(self.threads_for(n_queries)):
            yield


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers, so writes are not starved.

    Not reentrant: a thread holding it must not acquire it again.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self, *, blocking: bool = True) -> Iterator[None]:
        """Hold the lock shared for the block; without ``blocking``, :class:`IndexBusyError` instead of waiting
        when a writer holds it or waits for it."""
        with self._cond:
            while self._writer or self._writers_waiting:
                if not blocking:
                    raise IndexBusyError("a write holds the index, or waits for it")
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively for the block."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
