"""Structured logs: request ids on responses and log records, JSON lines, job ids in worker logs."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import pytest

from service.db import Database
from service.jobs import queue
from service.jobs.worker import JobContext, Worker
from service.logs import REQUEST_ID_PATTERN, ContextFilter, JsonFormatter, TextFormatter, bind
from service.migrate import upgrade
from tests.service.conftest import LiveServer, make_settings, post_image

GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captured records with the bound fields copied on, as the real handler does."""
    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.INFO)
    return caplog


def access_records(caplog: pytest.LogCaptureFixture, path: str, count: int = 1) -> list[logging.LogRecord]:
    """The access lines for ``path``, waiting briefly: the line is written just after the response is sent."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in caplog.records if r.name == "metah.access" and getattr(r, "path", None) == path]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def test_a_plain_request_id_is_echoed_and_logged(server: LiveServer, records: pytest.LogCaptureFixture) -> None:
    response = server.client().get("/healthz", headers={"X-Request-ID": "req-42.a:b"})
    assert response.headers["x-request-id"] == "req-42.a:b"
    [line] = access_records(records, "/healthz")
    assert line.request_id == "req-42.a:b" and line.status == 200 and line.route == "/healthz"  # type: ignore[attr-defined]
    assert line.duration_ms >= 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("sent", [None, "", "x" * 65, "evil\tid", "a b", "ü", "id;drop table"])
def test_a_missing_or_hostile_request_id_is_replaced(
    server: LiveServer, records: pytest.LogCaptureFixture, sent: str | None
) -> None:
    headers = {"X-Request-ID": sent.encode()} if sent is not None else {}
    response = server.client().get("/healthz", headers=headers)
    assert response.status_code == 200
    assert GENERATED_ID.match(response.headers["x-request-id"])
    [line] = access_records(records, "/healthz")
    assert line.request_id == response.headers["x-request-id"]  # type: ignore[attr-defined]


def test_every_request_gets_its_own_id(server: LiveServer, digit_pngs: list[tuple[bytes, str]]) -> None:
    client = server.client()
    ids = {post_image(client, data).headers["x-request-id"] for data, _ in digit_pngs[:5]}
    assert len(ids) == 5


def test_refused_and_failed_requests_carry_an_id_too(server: LiveServer, records: pytest.LogCaptureFixture) -> None:
    too_big = server.client().post(
        "/v1/images", files={"image": ("a.png", b"\0" * (server.settings.max_upload_bytes + 1))}
    )
    unknown = server.client().get("/v1/images/999999")
    assert too_big.status_code == 413 and unknown.status_code == 404
    for response in (too_big, unknown):
        assert GENERATED_ID.match(response.headers["x-request-id"])
    assert [r.status for r in access_records(records, "/v1/images/999999")] == [404]  # type: ignore[attr-defined]


def test_json_lines_hold_the_bound_fields_extras_and_the_exception() -> None:
    logger = logging.getLogger("tests.logs")
    with bind(request_id="r1", job_id=7):
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "boom %d", (3,), None, extra={"k": "v"})
        ContextFilter().filter(record)
    try:
        raise ValueError("inner")
    except ValueError:
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "boom 3" and entry["level"] == "ERROR" and entry["logger"] == "tests.logs"
    assert entry["request_id"] == "r1" and entry["job_id"] == 7 and entry["k"] == "v"
    assert "ValueError: inner" in entry["exc"] and entry["ts"].endswith("+00:00")
    assert TextFormatter().format(record).startswith("ERROR tests.logs: boom 3 [")


def test_bindings_nest_and_unwind() -> None:
    record = logging.makeLogRecord({})
    with bind(request_id="outer"), bind(job_id=1):
        ContextFilter().filter(record)
    assert (record.request_id, record.job_id) == ("outer", 1)  # type: ignore[attr-defined]
    after = logging.makeLogRecord({})
    ContextFilter().filter(after)
    assert not hasattr(after, "request_id")


def test_the_request_id_pattern_is_strict() -> None:
    assert REQUEST_ID_PATTERN.match("0f3a-9.b:c_D")
    assert not REQUEST_ID_PATTERN.match("a\nb") and not REQUEST_ID_PATTERN.match("x" * 65)


def test_a_workers_log_lines_carry_the_job_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url)
    db = Database(url)
    try:
        with db.session() as session:
            job = queue.enqueue(session, "noisy", {})
            session.commit()
            job_id = job.id

        def noisy(context: JobContext) -> dict[str, int]:
            logging.getLogger("tests.handler").info("working")
            return {}

        caplog.handler.addFilter(ContextFilter())
        caplog.set_level(logging.INFO)
        assert Worker(make_settings(tmp_path), db, {"noisy": noisy}).run_once()
    finally:
        db.close()
    [inside] = [r for r in caplog.records if r.name == "tests.handler"]
    assert (inside.job_id, inside.job_kind) == (job_id, "noisy")  # type: ignore[attr-defined]
    done = [r for r in caplog.records if r.name == "service.jobs.worker" and "succeeded" in r.getMessage()]
    assert [r.job_id for r in done] == [job_id]  # type: ignore[attr-defined]
