"""The job queue on its own: concurrent workers claim every job exactly once (SQLite, and PostgreSQL's
``FOR UPDATE SKIP LOCKED`` branch), and the 0002 migration."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text

from service import repository
from service.db import Database
from service.jobs import activation, queue
from service.jobs.worker import JobContext, Worker
from service.migrate import downgrade, upgrade
from service.models import ACTIVATION_INDEX, Job
from tests.service.conftest import make_settings
from tests.service.test_postgres import pg_url  # noqa: F401 - the fixture, for the PostgreSQL case

JOBS = 40
WORKERS = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metah.db'}"
        return
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


def test_migration_0003_keeps_the_oldest_of_duplicate_activations(db_url: str) -> None:
    upgrade(db_url, "0002")  # before the index two racing requests could both queue an activation
    engine = create_engine(db_url)
    try:
        with engine.begin() as connection:
            for status in ("succeeded", "queued", "running", "queued"):
                connection.execute(
                    text(
                        "INSERT INTO jobs (kind, status, progress_done, progress_total, errors, params, result, "
                        "created_at, updated_at, cancel_requested, attempts) VALUES ('activate', :s, 0, 0, '[]', "
                        "'{}', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, false, 0)"
                    ),
                    {"s": status},
                )
        upgrade(db_url)
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT status FROM jobs ORDER BY id")).scalars().all()
        assert rows == ["succeeded", "queued", "cancelled", "cancelled"]
        assert ACTIVATION_INDEX in {index["name"] for index in inspect(engine).get_indexes("jobs")}
        db = Database(db_url)
        try:
            with pytest.raises(activation.ActivationRunningError, match="already queued or running"):
                activation.enqueue_activation(db, "v2")
        finally:
            db.close()
        downgrade(db_url, "0002")
        assert ACTIVATION_INDEX not in {index["name"] for index in inspect(engine).get_indexes("jobs")}
    finally:
        engine.dispose()


def test_changes_become_visible_in_id_order(db_url: str) -> None:
    """A writer that logs a change while another's is uncommitted waits, so no follower can skip an id."""
    upgrade(db_url)
    db = Database(db_url)
    try:
        with db.session() as first:
            first_id = repository.log_change(first, 1, "add")  # uncommitted
            second_ids: list[int] = []

            def second_writer() -> None:
                with db.session() as second:
                    second_ids.append(repository.log_change(second, 2, "add"))
                    second.commit()

            thread = threading.Thread(target=second_writer)
            thread.start()
            thread.join(timeout=0.5)
            assert thread.is_alive() and not second_ids  # it waits for the first transaction
            first.commit()
        thread.join(timeout=30)
        assert second_ids and second_ids[0] > first_id
        with db.session() as session:
            assert repository.last_change(session) == second_ids[0]
    finally:
        db.close()
