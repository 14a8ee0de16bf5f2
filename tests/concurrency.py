"""Run worker loops on threads for a while and collect what they raised (the concurrency tests' driver)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_threads(
    workers: list[Callable[[], None]],
    seconds: float,
    until: Callable[[], bool] = lambda: True,
    deadline: float = 60.0,
) -> list[BaseException]:
    """Run workers in loops for ``seconds``, and on until ``until()`` holds (what the test needs to have
    happened: on a loaded CI machine a second may not be enough) or ``deadline`` seconds have passed; return
    what they raised."""
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
    started = time.monotonic()
    time.sleep(seconds)
    while not errors and not until() and time.monotonic() - started < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=deadline)
    return errors
