"""Run worker loops on threads for a while and collect what they raised (the concurrency tests' driver)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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
