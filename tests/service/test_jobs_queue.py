"""The job queue on its own: concurrent workers claim every job exactly once (SQLite; PostgreSQL's
``FOR UPDATE SKIP LOCKED`` branch too when ``METAH_TEST_POSTGRES_URL`` is set), and the 0002 migration."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select

from migrations.models import Job
from migrations.runner import downgrade, upgrade
from service.db import Database
from service.jobs import queue
from service.jobs.worker import JobContext, Worker
from tests.service.conftest import make_settings
from tests.service.test_postgres import pg_url  # noqa: F401 - the fixture, for the PostgreSQL case

JOBS = 40
WORKERS = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metah.db'}"
        return
    if not os.environ.get("METAH_TEST_POSTGRES_URL"):
        pytest.skip("METAH_TEST_POSTGRES_URL is not set")
    yield request.getfixturevalue("pg_url")


def test_concurrent_workers_claim_each_job_once(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    settings = make_settings(tmp_path, database_url=db_url, worker_poll_s=0.01)
    db = Database(db_url)
    with db.session() as session:
        for i in range(JOBS):
            queue.enqueue(session, "noop", {"i": i})
        session.commit()
    ran: list[int] = []
    lock = threading.Lock()

    def noop(context: JobContext) -> dict[str, int]:
        with lock:
            ran.append(context.job.id)
        return {"by": threading.get_ident()}

    workers = [Worker(settings, Database(db_url), {"noop": noop}) for _ in range(WORKERS)]
    threads = [threading.Thread(target=w.run_forever, args=(lambda: len(ran) < JOBS,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert sorted(ran) == sorted(set(ran)) and len(ran) == JOBS
        with db.session() as session:
            jobs = list(session.scalars(select(Job)))
        assert {job.status for job in jobs} == {queue.SUCCEEDED}
        assert {job.attempts for job in jobs} == {1}
    finally:
        for worker in workers:
            worker.db.close()
        db.close()


def test_migration_0002_downgrades_to_0001(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url)
    engine = create_engine(url)
    try:
        new = {"cancel_requested", "claimed_by", "heartbeat_at", "attempts"}
        assert new <= {c["name"] for c in inspect(engine).get_columns("jobs")}
        downgrade(url, "0001")
        assert not new & {c["name"] for c in inspect(engine).get_columns("jobs")}
        upgrade(url)
        assert new <= {c["name"] for c in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()
