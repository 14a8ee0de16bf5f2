"""Jobs that survive their workers and their database (issue 13): a job that kills its worker is retried at
most ``job_max_attempts`` times with a growing pause, then fails with ``worker_died``; a database that goes
away for a while (a restart, a failover) delays heartbeat, progress and outcome instead of failing the job or
ending its heartbeat."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.db import Database, retry_transient
from service.jobs import queue
from service.jobs.worker import JobContext, Worker
from service.migrate import upgrade
from service.settings import Settings
from tests.service.conftest import REPO, make_settings, metah_environment, postgres_admin_url
from tests.service.test_api_crash import job_row
from tests.service.test_postgres import pg_url  # noqa: F401 - the fixture, for the PostgreSQL case

STALE_S = 0.5

# A worker process whose only job kind kills it (as an out-of-memory kill or a native crash would), after
# noting the time of the claim in the file named by its first argument.
SUICIDAL_WORKER = """
import os, signal, sys, time
from service.db import Database
from service.jobs.worker import Worker
from service.settings import Settings

def die(context):
    with open(sys.argv[1], "a") as claims:
        claims.write(f"{time.time()}\\n")
    os.kill(os.getpid(), signal.SIGKILL)

settings = Settings()
Worker(settings, Database(settings.sqlalchemy_url), {"suicidal": die}).run_forever()
"""


def enqueue(db: Database, kind: str) -> int:
    with db.session() as session:
        job_id = queue.enqueue(session, kind, {}).id
        session.commit()
    return job_id


def test_a_job_that_kills_its_worker_fails_after_max_attempts(tmp_path: Path) -> None:
    """Each death is noticed after the heartbeat's silence, which doubles per attempt; the third death fails
    the job with a clear error instead of a fourth worker dying (before: it looped for ever)."""
    url = f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url)
    db = Database(url)
    job_id = enqueue(db, "suicidal")
    claims = tmp_path / "claims"
    env = metah_environment(
        DATA_DIR=str(tmp_path),
        DATABASE_URL=url,
        WORKER_POLL_S="0.05",
        JOB_HEARTBEAT_S="0.1",
        JOB_STALE_AFTER_S=str(STALE_S),
        JOB_MAX_ATTEMPTS="3",
    )
    command = [sys.executable, "-c", SUICIDAL_WORKER, str(claims)]
    worker: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + 40
    try:
        while job_row(db, job_id).status not in queue.FINISHED:  # the test supervises its workers
            assert time.monotonic() < deadline, job_row(db, job_id).attempts
            if worker is None or worker.poll() is not None:
                worker = subprocess.Popen(command, env=env, cwd=REPO)
            time.sleep(0.05)
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
    job = job_row(db, job_id)
    db.close()
    times = [float(line) for line in claims.read_text().split()]
    assert (job.status, job.attempts, len(times)) == (queue.FAILED, 3, 3), (job.status, job.attempts, times)
    assert job.errors[0]["code"] == queue.WORKER_DIED and "died 3 times" in job.errors[0]["message"], job.errors
    assert times[1] - times[0] >= STALE_S and times[2] - times[1] >= 2 * STALE_S, times  # the backoff


def test_requeue_backs_off_then_fails(tmp_path: Path) -> None:
    """The silence before a dead worker's job is queued again is ``stale_after × 2^(attempts-1)``; at
    ``max_attempts`` the job fails and keeps the errors it had reported."""
    url = f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url)
    db = Database(url)
    job_id = enqueue(db, "any")
    stale = 10.0

    def claimed() -> Any:
        token = queue.new_token()
        job = queue.claim(db, token)
        assert job is not None and job.id == job_id
        assert job.heartbeat_at is not None
        return job.heartbeat_at, token

    def after(seconds: float) -> queue.Abandoned:
        return queue.requeue_stale(db, stale, 3, now=beat + timedelta(seconds=seconds))

    beat, _ = claimed()
    assert after(stale - 1) == queue.Abandoned()
    assert after(stale + 1) == queue.Abandoned(requeued=[job_id])
    beat, token = claimed()
    queue.report(db, job_id, token, errors=[{"item": "a.png", "code": "decode_error", "message": "bad"}])
    assert after(stale + 1) == queue.Abandoned()  # the second attempt waits twice as long
    assert after(2 * stale + 1) == queue.Abandoned(requeued=[job_id])
    beat, _ = claimed()
    assert after(stale + 1) == queue.Abandoned(failed=[job_id])
    job = job_row(db, job_id)
    assert (job.status, job.attempts, job.heartbeat_at) == (queue.FAILED, 3, None)
    assert [error["code"] for error in job.errors] == [queue.WORKER_DIED, "decode_error"]
    db.close()


def test_a_released_job_gives_its_attempt_back(tmp_path: Path) -> None:
    """A worker that stops puts its job back without spending one of its attempts."""
    url = f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url)
    db = Database(url)
    job_id = enqueue(db, "long")
    worker = Worker(make_settings(tmp_path, database_url=url), db, {"long": lambda context: context.progress(1)})
    worker.stop()  # stopping before the batch ends: the job is released
    assert worker.run_once()
    job = job_row(db, job_id)
    assert (job.status, job.attempts) == (queue.QUEUED, 0)
    db.close()


class FlakyDatabase(Database):
    """A database whose next ``failures`` sessions fail as a server restart fails them."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.failures = 0
        self.failed = 0
        self._lock = threading.Lock()

    def session(self) -> AbstractContextManager[Session]:
        with self._lock:
            if self.failures > 0:
                self.failures -= 1
                self.failed += 1
                raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection unexpectedly"))
        return super().session()


def flaky_worker(tmp_path: Path, handler: Any, **settings: Any) -> tuple[Worker, FlakyDatabase, Database, int]:
    url = f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url)
    flaky, plain = FlakyDatabase(url), Database(url)
    job_id = enqueue(plain, "flaky")
    values = {"database_url": url, "job_heartbeat_s": 0.05, "job_db_retry_s": 30.0, **settings}
    return Worker(make_settings(tmp_path, **values), flaky, {"flaky": handler}), flaky, plain, job_id


def test_progress_and_outcome_outlive_a_database_outage(tmp_path: Path) -> None:
    """Progress and the final outcome are written again until the database answers (before: the job failed
    with internal_error, or the worker loop died with the error)."""

    def handler(context: JobContext) -> dict[str, Any]:
        flaky.failures = 3
        context.progress(1, 2)
        context.progress(2, 2)
        flaky.failures = 3
        return {"done": True}

    worker, flaky, plain, job_id = flaky_worker(tmp_path, handler, job_heartbeat_s=60.0)
    assert worker.run_once()
    job = job_row(plain, job_id)
    assert (job.status, job.result, job.progress_done, flaky.failed) == (queue.SUCCEEDED, {"done": True}, 2, 6)
    plain.close()
    flaky.close()


def test_the_heartbeat_outlives_a_database_outage(tmp_path: Path) -> None:
    """The heartbeat thread retries through an outage and keeps beating after it (before: it ended at the first
    error, so the job looked abandoned while it ran). The test waits for two fresh beats rather than sleeping a
    fixed time: on a loaded machine the last retry's pause (1.6 s) and a commit may take longer than planned."""
    beats: list[Any] = []

    def handler(context: JobContext) -> dict[str, Any]:
        flaky.failures = 5
        deadline = time.monotonic() + 10
        while flaky.failures and time.monotonic() < deadline:  # the heartbeats meet the outage
            time.sleep(0.05)
        beats.append(job_row(plain, context.job.id).heartbeat_at)  # the last beat before the outage ended
        deadline = time.monotonic() + 30
        while len(beats) < 3 and time.monotonic() < deadline:
            beat = job_row(plain, context.job.id).heartbeat_at
            if beat > beats[-1]:
                beats.append(beat)
            time.sleep(0.05)
        return {}

    worker, flaky, plain, job_id = flaky_worker(tmp_path, handler)
    assert worker.run_once()
    assert job_row(plain, job_id).status == queue.SUCCEEDED
    assert flaky.failed == 5 and len(beats) == 3, (flaky.failed, beats)
    plain.close()
    flaky.close()


def test_retry_transient_gives_up_after_its_time_and_never_retries_other_errors() -> None:
    waits: list[float] = []
    calls = 0

    def down() -> None:
        nonlocal calls
        calls += 1
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    with pytest.raises(OperationalError):
        retry_transient(down, what="test", give_up_after=0.05, first_wait=0.01, sleep=waits.append)
    assert calls == len(waits) + 1 >= 2 and waits[:3] == [0.01, 0.02, 0.04]

    def wrong() -> None:
        raise ValueError("not the database")

    with pytest.raises(ValueError, match="not the database"):
        retry_transient(wrong, what="test", give_up_after=10, sleep=waits.append)


@pytest.fixture
def refused_connections(pg_url: str) -> Iterator[tuple[str, Any]]:  # noqa: F811
    """The test's PostgreSQL database and a function that makes it refuse every connection (and drops the open
    ones) for some seconds, as a restart or a failover does, without touching the other databases of the cluster."""
    admin_url = postgres_admin_url()
    assert admin_url is not None
    name = make_url(pg_url).database
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def outage(seconds: float) -> None:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            try:
                ends = time.monotonic() + seconds
                while time.monotonic() < ends:
                    connection.execute(
                        text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                        {"name": name},
                    )
                    time.sleep(0.1)
            finally:
                connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))

    try:
        yield pg_url, outage
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_a_job_runs_through_a_postgresql_outage(tmp_path: Path, refused_connections: tuple[str, Any]) -> None:
    """A real outage: PostgreSQL drops the worker's connections and refuses new ones for 2 s while the job
    reports progress and beats; the job succeeds with every step recorded."""
    url, outage = refused_connections
    upgrade(url)
    db = Database(url)
    job_id = enqueue(db, "steady")
    steps = 40
    outages: list[threading.Thread] = []

    def steady(context: JobContext) -> dict[str, Any]:
        for step in range(1, steps + 1):
            if step == 5:
                outages.append(threading.Thread(target=outage, args=(2.0,)))
                outages[0].start()
            context.progress(step, steps)
            time.sleep(0.1)
        return {"steps": steps}

    settings: Settings = make_settings(tmp_path, database_url=url, job_heartbeat_s=0.1, job_db_retry_s=30.0)
    worker = Worker(settings, Database(url), {"steady": steady})
    try:
        assert worker.run_once()
    finally:
        for thread in outages:
            thread.join()
    job = job_row(db, job_id)
    assert (job.status, job.result, job.progress_done) == (queue.SUCCEEDED, {"steps": steps}, steps), job.errors
    worker.db.close()
    db.close()
