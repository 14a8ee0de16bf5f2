"""The search path's costs: no follower lock when nothing changed, one parse of the upload, a bounded CPU queue,
no blocking call on the event loop, and cheap searches on an idle server answered on the event loop itself.

Each test counts what the route does on a real server (its threads run in this process, so the counters see
them): ``ChangeFollower.catch_up`` calls (the lock and its database round trip), ``PIL.Image.open`` calls, and
the 429 with ``Retry-After`` when ``METAH_CPU_QUEUE`` requests already wait for the CPU slots.
"""

from __future__ import annotations

import asyncio
import io
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
from service import repository, retrieval
from service.db import Database
from service.errors import TooBusyError
from service.follow import ChangeFollower
from service.limits import CpuSlots, InlineGate
from tests.service.conftest import LiveServer, StartServer, assert_error, post_image, search

QUIET = {"changes_poll_s": 3600.0}  # no background catch-up during the test: only the searches' own count


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[bool]:
    """Replace ``owner.name`` with a wrapper recording its calls: per call, whether it ran on an event loop's
    thread (the list's length counts them)."""
    where: list[bool] = []
    original: Callable[..., Any] = getattr(owner, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        where.append(_on_event_loop())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return where


def test_a_search_takes_no_follower_lock_when_nothing_changed(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = start_server(**QUIET).client()
    ids = [post_image(client, data, label=label).json()["id"] for data, label in digit_pngs[:6]]
    catch_ups = _calls(monkeypatch, ChangeFollower, "catch_up")
    first = search(client, digit_pngs[0][0], k=6).json()["hits"]  # the API's own writes: read-your-writes
    assert sorted(hit["id"] for hit in first) == sorted(ids)
    seen = len(catch_ups)
    for data, _ in digit_pngs[:5]:
        assert len(search(client, data, k=3).json()["hits"]) == 3
    assert len(catch_ups) == seen, "a search took the follower's lock although the change log had not moved"


def test_the_first_search_after_the_apis_own_writes_searches_once(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's own upload or delete moves the follower's cursor (it is the next change), so the search after it
    neither catches up nor searches the index a second time."""
    client = start_server(**QUIET).client()
    catch_ups = _calls(monkeypatch, ChangeFollower, "catch_up")
    searches = _calls(monkeypatch, retrieval, "hydrate")
    ids = [post_image(client, data, label=label).json()["id"] for data, label in digit_pngs[:4]]
    assert sorted(hit["id"] for hit in search(client, digit_pngs[0][0], k=4).json()["hits"]) == sorted(ids)
    assert client.delete(f"/v1/images/{ids[0]}").status_code == 204
    assert ids[0] not in {hit["id"] for hit in search(client, digit_pngs[0][0], k=4).json()["hits"]}
    assert (len(catch_ups), len(searches)) == (0, 2)


def test_a_search_opens_the_uploaded_image_once(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = start_server(**QUIET).client()
    post_image(client, digit_pngs[0][0])
    opens = _calls(monkeypatch, Image, "open")
    assert search(client, digit_pngs[1][0], k=1).status_code == 200
    assert len(opens) == 1


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


# ------------------------------------------------------------------------------ searches on the event loop


def _gate_opened_wide(server: LiveServer) -> None:
    """Let any search the gate admits run on the loop, however long the test machine takes for one: these tests
    are about where a search runs, not about the budget (whose test is the gate's own)."""
    server.server.lifespan.state["runtime"].inline.budget_s = 60.0


def _runs(server: LiveServer, on: str) -> float:
    text = server.client().get("/metrics").text
    line = next((line for line in text.splitlines() if line.startswith(f'metah_search_runs_total{{on="{on}"}}')), None)
    return float(line.split()[-1]) if line is not None else 0.0


def test_an_idle_server_answers_cheap_searches_on_the_event_loop(
    start_server: StartServer,
    digit_pngs: list[tuple[bytes, str]],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str | None,
) -> None:
    """The first search runs in a worker thread (its cost is not known yet); the next ones, one at a time with the
    test's tiny model, on the event loop, with the same answers. With PostgreSQL (a network round trip per
    search) every search stays in a worker thread."""
    server = start_server(**QUIET)
    _gate_opened_wide(server)
    client = server.client()
    for data, label in digit_pngs[:4]:
        post_image(client, data, label=label)
    where = _calls(monkeypatch, retrieval, "hydrate")
    answers = [search(client, data, k=4).json()["hits"] for data, _ in digit_pngs[:4]]
    again = [search(client, data, k=4).json()["hits"] for data, _ in digit_pngs[:4]]
    assert again == answers and all(len(hits) == 4 for hits in answers)
    embedded = database_url is None
    assert where == [False] + [embedded] * 7
    assert (_runs(server, "loop"), _runs(server, "thread")) == ((7, 1) if embedded else (0, 8))


def test_a_large_upload_is_searched_in_a_worker_thread(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload over the gate's pixel limit is not decoded on the event loop, whatever the recent searches cost:
    its search runs in a worker thread (and finds the same image as the small one)."""
    server = start_server(**QUIET)
    _gate_opened_wide(server)
    client = server.client()
    data = digit_pngs[0][0]
    stored = post_image(client, data).json()["id"]
    assert search(client, data, k=1).status_code == 200  # the gate learns what a search costs
    side = 600
    assert side * side > 512 * 512  # the runtime's INLINE_MAX_PIXELS
    large = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("L").resize((side, side), Image.Resampling.NEAREST).save(large, "PNG")
    where = _calls(monkeypatch, retrieval, "hydrate")
    hits = search(client, large.getvalue(), k=1).json()["hits"]
    assert [hit["id"] for hit in hits] == [stored]
    assert where == [False]


def test_a_search_that_must_catch_up_does_it_in_a_worker_thread(
    start_server: StartServer,
    digit_pngs: list[tuple[bytes, str]],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str | None,
) -> None:
    """Another process's write (a row deleted straight in the database, as a job worker would) leaves the index
    behind the log: a search on the event loop must not wait for the follower's lock and apply it there, so it
    is run again in a worker thread, which catches up; the deleted image is not returned."""
    server = start_server(**QUIET)
    _gate_opened_wide(server)
    client = server.client()
    ids = [post_image(client, data, label=label).json()["id"] for data, label in digit_pngs[:3]]
    assert search(client, digit_pngs[0][0], k=3).status_code == 200
    db = Database(server.settings.sqlalchemy_url)
    try:
        with db.session() as session:
            image = repository.image_by_id(session, ids[0])
            assert image is not None
            repository.delete_image(session, image)
            session.commit()
    finally:
        db.close()
    catch_ups = _calls(monkeypatch, ChangeFollower, "catch_up")
    hydrates = _calls(monkeypatch, retrieval, "hydrate")
    hits = search(client, digit_pngs[0][0], k=3).json()["hits"]
    assert sorted(hit["id"] for hit in hits) == sorted(ids[1:])
    assert catch_ups == [False]
    # on the loop: the hydrate that finds the log ahead; in the thread: the same, then after the catch-up
    assert hydrates == ([True] if database_url is None else []) + [False, False]


def test_a_search_that_finds_the_index_being_written_waits_in_a_worker_thread(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]]
) -> None:
    """While a write holds the serving index's lock (held open here), a search does not wait for it on the event
    loop: it waits in a worker thread, and the loop answers other requests meanwhile."""
    server = start_server(**QUIET)
    _gate_opened_wide(server)
    client = server.client()
    stored = post_image(client, digit_pngs[0][0]).json()["id"]
    assert search(client, digit_pngs[1][0], k=1).status_code == 200  # the gate learns what a search costs
    runtime = server.server.lifespan.state["runtime"]
    index = runtime.active.current.index
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(search(server.client(), digit_pngs[0][0], k=1)))
    with index._lock.write():  # a write in progress, held open
        waiting.start()
        deadline = time.monotonic() + 10
        while runtime.cpu.admitted_now < 1:  # the search is in: on the loop or in a thread, at the index's lock
            assert time.monotonic() < deadline, "the search never started"
            time.sleep(0.01)
        time.sleep(0.1)
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        assert time.perf_counter() - started < 0.5, "the event loop waited for the index's write"
        assert not answers, "the search did not wait for the write"
    waiting.join(timeout=30)
    assert [hit["id"] for hit in answers[0].json()["hits"]] == [stored]
    assert _runs(server, "loop") == 0  # (the first search, before, ran in a thread too)


def test_a_busy_server_searches_in_worker_threads(
    start_server: StartServer, digit_pngs: list[tuple[bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one search is in flight (a large upload, held in its decode in a worker thread), the next one is not
    run on the event loop: it takes a worker thread too, and both answer."""
    server = start_server(**QUIET)
    _gate_opened_wide(server)
    client = server.client()
    post_image(client, digit_pngs[0][0])
    assert search(client, digit_pngs[1][0], k=1).status_code == 200  # the gate learns what a search costs
    large = io.BytesIO()
    Image.open(io.BytesIO(digit_pngs[2][0])).resize((600, 600)).save(large, "PNG")
    inside, release = threading.Event(), threading.Event()
    decode_upload = retrieval.decode_upload
    where: list[bool] = []

    def held_in_a_thread(*args: Any) -> np.ndarray:
        where.append(_on_event_loop())
        if not where[-1] and not inside.is_set():
            inside.set()
            assert release.wait(timeout=30)
        return decode_upload(*args)

    monkeypatch.setattr(retrieval, "decode_upload", held_in_a_thread)
    held: list[int] = []
    thread = threading.Thread(target=lambda: held.append(search(server.client(), large.getvalue()).status_code))
    thread.start()
    try:
        assert inside.wait(timeout=30), "the large upload's search did not reach its decode in a thread"
        seen = len(where)
        assert search(client, digit_pngs[3][0]).status_code == 200
        assert where[seen:] == [False]
    finally:
        release.set()
        thread.join(timeout=30)
    assert held == [200]


def test_the_inline_gate_opens_for_cheap_calls_on_an_idle_server() -> None:
    gate = InlineGate(0.05, 100)
    assert not gate.allows(1)  # nothing measured yet
    assert gate.timed(lambda: 7) == 7
    assert gate.mean_s is not None and gate.mean_s < 0.05
    assert gate.allows(1) and not gate.allows(2)
    assert not InlineGate(0.05, 100, enabled=False).allows(1)


def test_the_inline_gate_closes_once_calls_cost_more_than_its_budget() -> None:
    gate = InlineGate(0.01, 100, weight=0.5)
    gate.timed(lambda: None)
    assert gate.allows(1)
    for _ in range(3):
        gate.timed(lambda: time.sleep(0.03))
    assert gate.mean_s is not None and gate.mean_s > 0.01
    assert not gate.allows(1)
    before = gate.mean_s

    def fails() -> None:
        raise ValueError("no answer")

    with pytest.raises(ValueError, match="no answer"):
        gate.timed(fails)
    assert gate.mean_s == before  # a call that raised is not measured


@pytest.mark.parametrize(("budget", "pixels", "weight"), [(0, 10, 0.5), (0.01, 0, 0.5), (0.01, 10, 0), (0.01, 10, 2)])
def test_the_inline_gate_refuses_meaningless_settings(budget: float, pixels: int, weight: float) -> None:
    with pytest.raises(ValueError, match="need a positive budget"):
        InlineGate(budget, pixels, weight=weight)
