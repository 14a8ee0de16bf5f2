"""The worker loop: re-queue abandoned jobs, claim the oldest queued one, run its handler, record the outcome.

A handler gets a :class:`JobContext`; it reports progress through :meth:`JobContext.progress`, which raises
:class:`Cancelled` when a cancel was requested (checked between batches) and :class:`Released` when the worker
is stopping (the job goes back to the queue for another worker). A heartbeat thread keeps a running job
alive while a long batch runs.

The database may go away for a while (a restart, a failover): heartbeat, progress and the job's outcome are
written again with backoff for up to ``job_db_retry_s`` (:func:`service.db.retry_transient`), and an idle
worker that cannot reach it waits and looks again, so neither a job nor the heartbeat ends because of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError

from service import blobs, cursors, repository
from service.db import Database, is_transient, retry_transient
from service.errors import CodedError
from service.jobs import queue
from service.logs import bind
from service.models import Job
from service.settings import Settings
from service.storage import BlobStore, BlobStoreError, open_blob_store

log = logging.getLogger(__name__)


class Cancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A cancel was requested for the running job."""


class Released(Exception):  # noqa: N818
    """The worker is stopping; the job goes back to the queue."""


class JobFailedError(CodedError):
    """A job that cannot succeed, with a message for its ``errors`` (e.g. an archive over the limits)."""

    code = "job_failed"


@dataclass
class JobContext:
    """What a handler may use: settings, database, blob store, its job row, and progress reporting."""

    settings: Settings
    db: Database
    store: BlobStore
    job: Job
    token: str
    stopping: threading.Event
    errors: list[dict[str, Any]] = field(default_factory=list)

    def progress(self, done: int, total: int | None = None) -> None:
        """Record progress and the errors so far; raises :class:`Cancelled` / :class:`Released`."""
        cancel = retry_transient(
            lambda: queue.report(self.db, self.job.id, self.token, done=done, total=total, errors=self.errors),
            what=f"job {self.job.id} progress",
            give_up_after=self.settings.job_db_retry_s,
        )
        if cancel:
            raise Cancelled
        if self.stopping.is_set():
            raise Released

    def item_error(self, item: str, code: str, message: str) -> None:
        self.errors.append({"item": item, "code": code, "message": message})


Handler = Callable[[JobContext], dict[str, Any]]


class Worker:
    """Claims and runs jobs until :meth:`stop`. ``handlers`` maps a job kind to its function; ``kinds`` (default:
    any) are the kinds this worker claims, so that a lane of workers can be kept for one kind."""

    def __init__(
        self, settings: Settings, db: Database, handlers: dict[str, Handler], kinds: Collection[str] | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.store = open_blob_store(settings)
        self.handlers = handlers
        self.kinds = None if kinds is None else frozenset(kinds)
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run_forever(self, should_continue: Callable[[], bool] = lambda: True) -> None:
        log.info("worker started")
        next_sweep = time.monotonic()
        while not self.stopping.is_set() and should_continue():
            if time.monotonic() >= next_sweep:
                self.sweep_blobs()
                next_sweep = time.monotonic() + self.settings.blob_sweep_s
            try:
                ran = self.run_once()
            except DBAPIError as exc:
                if not is_transient(exc):
                    raise
                log.warning("the database cannot be reached, looking again shortly: %s", exc.orig or exc)
                ran = False
            if not ran:
                self.stopping.wait(self.settings.worker_poll_s)
        log.info("worker stopped")

    def sweep_blobs(self) -> None:
        """Remove the blobs no row references any more (:func:`service.blobs.sweep`); a failure is logged and
        the next sweep tries again."""
        try:
            removed = blobs.sweep(self.db, self.store, self.settings.blob_grace_s)
        except (BlobStoreError, DBAPIError) as exc:
            log.warning("blob sweep interrupted, tried again in %.0f s: %s", self.settings.blob_sweep_s, exc)
            return
        if removed:
            log.info("blob sweep: %d blobs no row references removed", removed)

    def run_once(self) -> bool:
        """Re-queue abandoned jobs, then claim and run one job; ``False`` when none was queued."""
        settings = self.settings
        abandoned = queue.requeue_stale(self.db, settings.job_stale_after_s, settings.job_max_attempts)
        for job_id in abandoned.requeued:
            log.warning("job %d was left running by a dead worker: queued again", job_id)
        for job_id in abandoned.failed:
            log.error("job %d failed: its worker died %d times", job_id, settings.job_max_attempts)
        token = queue.new_token()
        job = queue.claim(self.db, token, self.kinds)
        if job is None:
            return False
        with bind(job_id=job.id, job_kind=job.kind):
            self._run(JobContext(self.settings, self.db, self.store, job, token, self.stopping))
        return True

    def _run(self, context: JobContext) -> None:
        job = context.job
        log.info("job %d (%s) started", job.id, job.kind)
        beating = threading.Event()
        beat = threading.Thread(target=self._beat, args=(context, beating), name=f"heartbeat-{job.id}", daemon=True)
        beat.start()
        try:
            handler = self.handlers.get(job.kind)
            if handler is None:
                raise JobFailedError(f"no handler for jobs of kind {job.kind!r}", code="unknown_kind")
            result = handler(context)
        except Cancelled:
            self._finish(context, queue.CANCELLED, errors=context.errors)
            log.info("job %d cancelled", job.id)
        except Released:
            self._finish(context, queue.QUEUED, errors=[])
            log.info("job %d released: the worker is stopping", job.id)
        except JobFailedError as exc:
            failure = {"code": exc.code, "message": str(exc)}
            self._finish(context, queue.FAILED, errors=[failure, *context.errors])
            log.warning("job %d failed: %s", job.id, exc)
        except BlobStoreError as exc:
            failure = {"code": "storage_unavailable", "message": f"the blob store is unavailable: {exc.reason}"}
            self._finish(context, queue.FAILED, errors=[failure, *context.errors])
            log.error("job %d failed: %s", job.id, exc)
        except Exception as exc:
            log.exception("job %d crashed", job.id)
            failure = {"code": "internal_error", "message": f"{exc.__class__.__name__}: {exc}"}
            self._finish(context, queue.FAILED, errors=[failure, *context.errors])
        else:
            self._await_indexer()
            self._finish(context, queue.SUCCEEDED, result=result, errors=context.errors)
            log.info("job %d succeeded: %s", job.id, result)
        finally:
            beating.set()
            beat.join()

    def _await_indexer(self) -> None:
        """On the Milvus backend a job is reported succeeded once the indexer has applied every change so far, so
        a client that saw it succeed finds its images (bounded by ``index_wait_s``)."""
        if self.settings.index_backend != "milvus":
            return
        with self.db.session() as session:
            last = repository.last_change(session)
        if not cursors.wait_indexed(self.db, last, self.settings.index_wait_s):
            log.warning("change %d not indexed in %.1f s: the job succeeds anyway", last, self.settings.index_wait_s)

    def _finish(
        self,
        context: JobContext,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        job_id, token = context.job.id, context.token
        retry_transient(
            lambda: queue.finish(self.db, job_id, token, status, result=result, errors=errors),
            what=f"job {job_id} outcome",
            give_up_after=self.settings.job_db_retry_s,
        )

    def _beat(self, context: JobContext, done: threading.Event) -> None:
        """Refresh the heartbeat until ``done``, or until the job is no longer this worker's. A database that
        stays away longer than ``job_db_retry_s`` is logged and tried again at the next beat."""
        job_id, token = context.job.id, context.token
        while not done.wait(self.settings.job_heartbeat_s):
            try:
                owned = retry_transient(
                    lambda: queue.heartbeat(self.db, job_id, token),
                    what=f"job {job_id} heartbeat",
                    give_up_after=self.settings.job_db_retry_s,
                )
            except Exception:
                log.exception("job %d: heartbeat not written", job_id)
                continue
            if not owned:
                return
