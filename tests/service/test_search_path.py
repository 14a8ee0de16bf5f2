"""The search path's costs: no follower lock when nothing changed, one parse of the upload, a bounded CPU queue,
no blocking call on the event loop.

Each test counts what the route does on a real server (its threads run in this process, so the counters see
them): ``ChangeFollower.catch_up`` calls (the lock and its database round trip), ``PIL.Image.open`` calls, and
the 429 with ``Retry-After`` when ``METAH_CPU_QUEUE`` requests already wait for the CPU slots.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from index.hash_index import HashIndex
from service import retrieval
from service.errors import TooBusyError
from service.follow import ChangeFollower
from service.limits import CpuSlots
from tests.service.conftest import StartServer, assert_error, post_image, search

QUIET = {"changes_poll_s": 3600.0}  # no background catch-up during the test: only the searches' own count


def _counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Replace ``owner.name`` with a wrapper that counts its calls; returns the one-element counter."""
    calls = [0]
    original: Callable[..., Any] = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_a_search_takes_no_follower_lock_when_nothing_changed(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = start_server(**QUIET).client()
    ids = [post_image(client, data, label=label).json()["id"] for data, label in digit_pngs[:6]]
    catch_ups = _counting(monkeypatch, ChangeFollower, "catch_up")
    first = search(client, digit_pngs[0][0], k=6).json()["hits"]  # the API's own writes: read-your-writes
    assert sorted(hit["id"] for hit in first) == sorted(ids)
    seen = catch_ups[0]
    for data, _ in digit_pngs[:5]:
        assert len(search(client, data, k=3).json()["hits"]) == 3
    assert catch_ups[0] == seen, "a search took the follower's lock although the change log had not moved"


def test_the_first_search_after_the_apis_own_writes_searches_once(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's own upload or delete moves the follower's cursor (it is the next change), so the search after it
    neither catches up nor searches the index a second time."""
    client = start_server(**QUIET).client()
    catch_ups = _counting(monkeypatch, ChangeFollower, "catch_up")
    searches = _counting(monkeypatch, retrieval, "hydrate")
    ids = [post_image(client, data, label=label).json()["id"] for data, label in digit_pngs[:4]]
    assert sorted(hit["id"] for hit in search(client, digit_pngs[0][0], k=4).json()["hits"]) == sorted(ids)
    assert client.delete(f"/v1/images/{ids[0]}").status_code == 204
    assert ids[0] not in {hit["id"] for hit in search(client, digit_pngs[0][0], k=4).json()["hits"]}
    assert (catch_ups[0], searches[0]) == (0, 2)


def test_a_search_opens_the_uploaded_image_once(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = start_server(**QUIET).client()
    post_image(client, digit_pngs[0][0])
    opens = _counting(monkeypatch, Image, "open")
    assert search(client, digit_pngs[1][0], k=1).status_code == 200
    assert opens[0] == 1


def test_a_full_cpu_queue_answers_429_with_retry_after(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``METAH_CPU_QUEUE=0``: with every CPU slot held by a search (held here until released), the next search is
    refused at once; once the slots are free, searches answer again."""
    client = start_server(cpu_queue=0, **QUIET).client()
    post_image(client, digit_pngs[0][0])
    slots = os.cpu_count() or 1
    inside, release = threading.Semaphore(0), threading.Event()
    decode_upload = retrieval.decode_upload

    def held_decode(*args: Any) -> np.ndarray:
        inside.release()
        assert release.wait(timeout=30)
        return decode_upload(*args)

    monkeypatch.setattr(retrieval, "decode_upload", held_decode)
    statuses: list[int] = []

    def blocked_search() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            statuses.append(search(own, digit_pngs[1][0]).status_code)

    threads = [threading.Thread(target=blocked_search) for _ in range(slots)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(slots):
            assert inside.acquire(timeout=30), "the searches did not reach the CPU stage"
        started = time.perf_counter()
        with httpx.Client(base_url=str(client.base_url), timeout=10) as impatient:
            refused = search(impatient, digit_pngs[2][0])
        assert time.perf_counter() - started < 5  # at once, not after the held searches
        assert_error(refused, 429, "too_busy")
        assert refused.headers["Retry-After"] == "1"
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=30)
    assert statuses == [200] * slots
    monkeypatch.setattr(retrieval, "decode_upload", decode_upload)
    assert search(client, digit_pngs[2][0]).status_code == 200


def test_cpu_slots_admit_slots_plus_queue() -> None:
    slots = CpuSlots(1, 1, retry_after_s=3)
    with slots.admitted(), slots.admitted():
        with pytest.raises(TooBusyError, match="busy") as refused, slots.admitted():
            pass
        assert refused.value.retry_after_s == 3
    with slots.admitted():  # released on exit
        assert slots.admitted_now == 1


def test_readyz_counts_the_index_off_the_event_loop(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/readyz`` reports the index's size; on the Milvus backend that count is a network round trip (seconds
    while Milvus is unreachable). Made slow here, it must not hold up other requests meanwhile."""
    server = start_server(**QUIET)
    client = server.client()
    post_image(client, digit_pngs[0][0])
    length, counting = HashIndex.__len__, threading.Event()

    def slow_len(index: HashIndex) -> int:
        counting.set()
        time.sleep(1.5)
        return length(index)

    monkeypatch.setattr(HashIndex, "__len__", slow_len)
    ready: list[httpx.Response] = []
    probe = threading.Thread(target=lambda: ready.append(server.client().get("/readyz")))
    probe.start()
    try:
        assert counting.wait(timeout=10), "/readyz did not count the index"
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        assert time.perf_counter() - started < 0.5, "a request waited for /readyz's count"
    finally:
        probe.join(timeout=30)
    assert ready[0].status_code == 200 and ready[0].json()["indexed"] == 1
