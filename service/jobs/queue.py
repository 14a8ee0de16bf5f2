"""The job queue: plain functions on the ``jobs`` table (enqueue, claim, heartbeat, progress, finish, cancel).

States: ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``; a queued job may also be
cancelled directly. A claim is atomic across processes:

* SQLite: ``UPDATE jobs SET status='running', claimed_by=:token … WHERE id = (SELECT oldest queued id) AND
  status='queued'``; the database's single writer makes that statement atomic, the rowcount says whether this
  worker won, and the claim token finds the row again.
* PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` of the oldest queued row, then the update, in one
  transaction, so concurrent workers skip each other's candidate instead of waiting on it.

A running job carries a heartbeat; a job whose heartbeat is older than ``stale_after`` belonged to a dead
worker and is queued again (:func:`requeue_stale`), with backoff: after its n-th claim it waits for
``stale_after × 2^(n-1)`` of silence. A job whose worker died ``max_attempts`` times (it probably kills its
worker: out of memory, a native crash) fails instead, with the error code :data:`WORKER_DIED`. A worker that
stops and releases its job gives the attempt back.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import Database
from service.models import Job, utc_now

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
MAX_ERRORS = 1000  # per job; later ones are counted in the result, not listed
WORKER_DIED = "worker_died"


def enqueue(session: Session, kind: str, params: dict[str, Any], *, total: int = 0) -> Job:
    """Add a queued job (the caller commits)."""
    job = Job(kind=kind, status=QUEUED, params=params, progress_total=total, errors=[], result={})
    session.add(job)
    session.flush()
    return job


def get(db: Database, job_id: int) -> Job | None:
    with db.session() as session:
        return session.get(Job, job_id)


def new_token() -> str:
    return uuid.uuid4().hex


def claim(db: Database, token: str, kinds: Collection[str] | None = None) -> Job | None:
    """Claim the oldest queued job (of one of ``kinds``, default any) for the worker identified by ``token``;
    ``None`` when none is queued."""
    now = utc_now()
    running = {"status": RUNNING, "claimed_by": token, "started_at": now, "heartbeat_at": now}
    with db.session() as session:
        oldest = select(Job.id).where(Job.status == QUEUED).order_by(Job.id).limit(1)
        if kinds is not None:
            oldest = oldest.where(Job.kind.in_(kinds))
        if session.get_bind().dialect.name == "postgresql":
            job_id = session.scalar(oldest.with_for_update(skip_locked=True))
            if job_id is None:
                return None
            condition = Job.id == job_id
        else:
            condition = Job.id == oldest.scalar_subquery()
        result = session.execute(
            update(Job)
            .where(condition, Job.status == QUEUED)
            .values(attempts=Job.attempts + 1, **running)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return session.scalars(select(Job).where(Job.claimed_by == token, Job.status == RUNNING)).one_or_none()


def _owned(job_id: int, token: str) -> Any:
    return (Job.id == job_id) & (Job.claimed_by == token) & (Job.status == RUNNING)


def heartbeat(db: Database, job_id: int, token: str) -> bool:
    """Refresh a running job's heartbeat; ``False`` when this worker no longer owns it (it was re-queued)."""
    with db.session() as session:
        result = session.execute(update(Job).where(_owned(job_id, token)).values(heartbeat_at=utc_now()))
        session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]


def report(
    db: Database,
    job_id: int,
    token: str,
    *,
    done: int | None = None,
    total: int | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> bool:
    """Record progress (and the error list so far) and refresh the heartbeat; returns whether a cancel was
    requested (or the job is no longer this worker's)."""
    values: dict[str, Any] = {"heartbeat_at": utc_now()}
    if done is not None:
        values["progress_done"] = done
    if total is not None:
        values["progress_total"] = total
    if errors is not None:
        values["errors"] = errors[:MAX_ERRORS]
    with db.session() as session:
        result = session.execute(update(Job).where(_owned(job_id, token)).values(**values))
        cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
        session.commit()
        return not result.rowcount or bool(cancel)  # type: ignore[attr-defined]


def finish(
    db: Database,
    job_id: int,
    token: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> bool:
    """Move a job this worker owns to a final state (or back to ``queued``, releasing it)."""
    values: dict[str, Any] = {"status": status, "heartbeat_at": None}
    if status in FINISHED:
        values["finished_at"] = utc_now()
    else:  # released: the attempt did not fail, so it is given back
        values |= {"claimed_by": None, "started_at": None, "attempts": Job.attempts - 1}
    if result is not None:
        values["result"] = result
    if errors is not None:
        values["errors"] = errors[:MAX_ERRORS]
    with db.session() as session:
        changed = session.execute(update(Job).where(_owned(job_id, token)).values(**values))
        session.commit()
        return bool(changed.rowcount)  # type: ignore[attr-defined]


def request_cancel(db: Database, job_id: int) -> Job | None:
    """Cancel a queued job now, or flag a running one (its worker stops between batches). ``None``: no job."""
    with db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == QUEUED)
            .values(status=CANCELLED, cancel_requested=True, finished_at=utc_now())
        )
        session.execute(update(Job).where(Job.id == job_id, Job.status == RUNNING).values(cancel_requested=True))
        session.commit()
        return session.get(Job, job_id)


@dataclass
class Abandoned:
    """What :func:`requeue_stale` did with the jobs of dead workers."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def requeue_stale(db: Database, stale_after: float, max_attempts: int, now: datetime | None = None) -> Abandoned:
    """Queue again the running jobs whose heartbeat is older than ``stale_after × 2^(attempts-1)`` seconds (their
    worker died); fail those whose worker died ``max_attempts`` times already (after ``stale_after``)."""
    now = now or utc_now()
    silent = (Job.status == RUNNING) & (
        (Job.heartbeat_at < now - timedelta(seconds=stale_after)) | Job.heartbeat_at.is_(None)
    )
    abandoned = Abandoned()
    with db.session() as session:
        for job in list(session.scalars(select(Job).where(silent).order_by(Job.id))):
            if job.attempts >= max_attempts:
                failure = {
                    "code": WORKER_DIED,
                    "message": f"the worker running this job died {job.attempts} times (at most {max_attempts} "
                    "attempts, METAH_JOB_MAX_ATTEMPTS): not retried again; see the worker logs",
                }
                values: dict[str, Any] = {"status": FAILED, "finished_at": now, "errors": [failure, *job.errors]}
                if _update_if(session, job.id, silent, values):
                    abandoned.failed.append(job.id)
                continue
            backoff = timedelta(seconds=stale_after * 2 ** max(job.attempts - 1, 0))
            if job.heartbeat_at is not None and job.heartbeat_at >= now - backoff:
                continue
            if _update_if(session, job.id, silent, {"status": QUEUED, "claimed_by": None, "started_at": None}):
                abandoned.requeued.append(job.id)
        session.commit()
    return abandoned


def _update_if(session: Session, job_id: int, condition: Any, values: dict[str, Any]) -> bool:
    """Update one job when it still meets ``condition`` (another worker may have got there first)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, condition)
        .values(heartbeat_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
