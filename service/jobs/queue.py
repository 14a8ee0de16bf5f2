"""The job queue: plain functions on the ``jobs`` table (enqueue, claim, heartbeat, progress, finish, cancel).

States: ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``; a queued job may also be
cancelled directly. A claim is atomic across processes:

* SQLite: ``UPDATE jobs SET status='running', claimed_by=:token … WHERE id = (SELECT oldest queued id) AND
  status='queued'``; the database's single writer makes that statement atomic, the rowcount says whether this
  worker won, and the claim token finds the row again.
* PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` of the oldest queued row, then the update, in one
  transaction, so concurrent workers skip each other's candidate instead of waiting on it.

A running job carries a heartbeat; a job whose heartbeat is older than ``stale_after`` belonged to a dead
worker and is queued again (:func:`requeue_stale`).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import Database
from service.models import Job, utc_now

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
MAX_ERRORS = 1000  # per job; later ones are counted in the result, not listed


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


def claim(db: Database, token: str) -> Job | None:
    """Claim the oldest queued job for the worker identified by ``token``; ``None`` when none is queued."""
    now = utc_now()
    running = {"status": RUNNING, "claimed_by": token, "started_at": now, "heartbeat_at": now}
    with db.session() as session:
        oldest = select(Job.id).where(Job.status == QUEUED).order_by(Job.id).limit(1)
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
    else:
        values |= {"claimed_by": None, "started_at": None}
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


def requeue_stale(db: Database, stale_after: float, now: datetime | None = None) -> list[int]:
    """Queue again the running jobs whose heartbeat is older than ``stale_after`` seconds (dead workers)."""
    cutoff = (now or utc_now()) - timedelta(seconds=stale_after)
    with db.session() as session:
        stale = (Job.status == RUNNING) & ((Job.heartbeat_at < cutoff) | Job.heartbeat_at.is_(None))
        ids = list(session.scalars(select(Job.id).where(stale)))
        if ids:
            session.execute(
                update(Job)
                .where(Job.id.in_(ids), stale)
                .values(status=QUEUED, claimed_by=None, started_at=None, heartbeat_at=None)
            )
            session.commit()
        return ids
