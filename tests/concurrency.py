"""Run worker loops on threads for a while and collect what they raised (the concurrency tests' driver)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_threads(
    workers: list[Callable[[], None]], seconds: float, min_rounds: int = 1, deadline: float = 60.0
) -> list[BaseException]:
    """Run workers in loops for ``seconds`` and until each has done ``min_rounds``; return what they raised.

    The round floor keeps the test meaningful on a loaded machine (CI shares two cores); ``deadline`` bounds it.
    """
    stop = threading.Event()
    errors: list[BaseException] = []
    give_up = time.monotonic() + deadline

    def loop(work: Callable[[], None]) -> None:
        rounds = 0
        try:
            while (not stop.is_set() or rounds < min_rounds) and time.monotonic() < give_up:
                work()
                rounds += 1
        except BaseException as error:  # reported to the test
            errors.append(error)

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=deadline)
    return errors
