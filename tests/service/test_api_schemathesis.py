"""Property-based requests from the OpenAPI schema of a running server (Schemathesis): zero 5xx, ever.

Every operation gets generated paths, queries, headers and bodies (valid and invalid), with the API key so that
writes run too; a response with status ≥ 500 fails the test. The server runs on SQLite and on PostgreSQL, with
a job worker, so the jobs the requests queue run too: none may crash (``internal_error``) or be left behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from sqlalchemy import select

from service.db import Database
from service.jobs import queue
from service.models import Job
from tests.service.conftest import API_KEY, LiveServer, fresh_postgres_database, make_settings, start_live_server
from tests.service.test_api_jobs import JOB_SETTINGS, WorkerThread

EXAMPLES_PER_OPERATION = 30
JOBS_DRAIN_S = 120


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live_api(
    request: pytest.FixtureRequest, api_artefact: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with ExitStack() as stack:
        overrides = {"model": api_artefact, **JOB_SETTINGS}
        if request.param == "postgresql":
            overrides["database_url"] = stack.enter_context(fresh_postgres_database())
        live = start_live_server(make_settings(tmp_path_factory.mktemp("schemathesis"), **overrides))
        stack.callback(live.stop)
        worker = WorkerThread(live).start()
        stack.callback(worker.stop)
        yield live
        assert_jobs_ran_without_crashing(worker.db)


def assert_jobs_ran_without_crashing(db: Database) -> None:
    """Every job the requests queued was run by the worker (none left queued or running), none crashed."""
    deadline = time.monotonic() + JOBS_DRAIN_S
    while True:
        with db.session() as session:
            jobs = session.scalars(select(Job)).all()
        if not any(job.status in (queue.QUEUED, queue.RUNNING) for job in jobs):
            break
        assert time.monotonic() < deadline, [(job.id, job.kind, job.status) for job in jobs]
        time.sleep(0.1)
    assert jobs, "the requests queued no job: the worker ran nothing"
    crashed = [(job.id, job.kind, job.errors) for job in jobs if any(e["code"] == "internal_error" for e in job.errors)]
    assert not crashed, crashed


@pytest.fixture(scope="module")
def api_schema(live_api: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples on every run: a failure here is reproducible
)
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers={"X-API-Key": API_KEY}, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
