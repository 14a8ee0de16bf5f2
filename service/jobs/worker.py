"""The worker loop: re-queue abandoned jobs, claim the oldest queued one, run its handler, record the outcome.

A handler gets a :class:`JobContext`; it reports progress through :meth:`JobContext.progress`, which raises
:class:`Cancelled` when a cancel was requested (checked between batches) and :class:`Released` when the worker
is stopping (the job goes back to the queue for another worker). A heartbeat thread keeps a running job
alive while a long batch runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.db import Database
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
        cancel = queue.report(self.db, self.job.id, self.token, done=done, total=total, errors=self.errors)
        if cancel:
            raise Cancelled
        if self.stopping.is_set():
            raise Released

    def item_error(self, item: str, code: str, message: str) -> None:
        self.errors.append({"item": item, "code": code, "message": message})


Handler = Callable[[JobContext], dict[str, Any]]


class Worker:
    """Claims and runs jobs until :meth:`stop`. ``handlers`` maps a job kind to its function."""

    def __init__(self, settings: Settings, db: Database, handlers: dict[str, Handler]) -> None:
        self.settings = settings
        self.db = db
        self.store = open_blob_store(settings)
        self.handlers = handlers
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run_forever(self, should_continue: Callable[[], bool] = lambda: True) -> None:
        log.info("worker started")
        while not self.stopping.is_set() and should_continue():
            if not self.run_once():
                self.stopping.wait(self.settings.worker_poll_s)
        log.info("worker stopped")

    def run_once(self) -> bool:
        """Re-queue abandoned jobs, then claim and run one job; ``False`` when none was queued."""
        for job_id in queue.requeue_stale(self.db, self.settings.job_stale_after_s):
            log.warning("job %d was left running by a dead worker: queued again", job_id)
        token = queue.new_token()
        job = queue.claim(self.db, token)
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
            queue.finish(self.db, job.id, context.token, queue.CANCELLED, errors=context.errors)
            log.info("job %d cancelled", job.id)
        except Released:
            queue.finish(self.db, job.id, context.token, queue.QUEUED, errors=[])
            log.info("job %d released: the worker is stopping", job.id)
        except JobFailedError as exc:
            failure = {"code": exc.code, "message": str(exc)}
            queue.finish(self.db, job.id, context.token, queue.FAILED, errors=[failure, *context.errors])
            log.warning("job %d failed: %s", job.id, exc)
        except BlobStoreError as exc:
            failure = {"code": "storage_unavailable", "message": f"the blob store is unavailable: {exc.reason}"}
            queue.finish(self.db, job.id, context.token, queue.FAILED, errors=[failure, *context.errors])
            log.error("job %d failed: %s", job.id, exc)
        except Exception as exc:
            log.exception("job %d crashed", job.id)
            failure = {"code": "internal_error", "message": f"{exc.__class__.__name__}: {exc}"}
            queue.finish(self.db, job.id, context.token, queue.FAILED, errors=[failure, *context.errors])
        else:
            queue.finish(self.db, job.id, context.token, queue.SUCCEEDED, result=result, errors=context.errors)
            log.info("job %d succeeded: %s", job.id, result)
        finally:
            beating.set()
            beat.join()

    def _beat(self, context: JobContext, done: threading.Event) -> None:
        while not done.wait(self.settings.job_heartbeat_s):
            if not queue.heartbeat(self.db, context.job.id, context.token):
                return
