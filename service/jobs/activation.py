"""Model activation: re-encode every stored image with a registered model, then mark it active.

The job (worker): images in id order, a batch at a time: :func:`service.pipeline.encode_stored` (read the
blobs → decode → encode; the API's follower re-encodes an image missing a code with the same function) → one
transaction of ``codes`` rows for the new version (images that already have one are skipped, so a re-queued
job resumes). Then one last pass for images stored meanwhile, and the
registry row becomes active. The API notices the activation (:meth:`service.follow.ChangeFollower.
follow_activation`), builds the new index from the ``codes`` table and swaps model and index together;
searches are answered by the old pair until then.

On the Milvus backend the job then asks the indexer for the new model's collection (:mod:`service.indexer`)
and waits until it is built and caught up (:func:`await_collection`) before it marks the model active and
retires the previous collection in the same transaction; the indexer then points the alias at it.

Before the switch, the job removes the codes of every model version but two: the one it activates and the one
active until now (the rollback target; activating it again re-encodes nothing). So the ``codes`` table holds at
most two codes per image instead of one more per activation. Activating the model that is already active
removes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from model.errors import CheckpointError
from service import cursors, repository
from service.db import Database
from service.jobs import queue
from service.jobs.worker import JobContext, JobFailedError
from service.models import Code, Image, Job
from service.pipeline import encode_stored
from service.registry import load_registered

log = logging.getLogger(__name__)

KIND = "activate"
AWAIT_POLL_S = 0.2  # how often the job looks at the new collection's cursor


class ActivationRunningError(Exception):
    """An activation job is already queued or running."""


def enqueue_activation(db: Database, version: str) -> int:
    """Queue activating ``version``. The partial unique index ``uq_jobs_one_activation`` makes "none is queued
    or running" and the insert one atomic step across threads, processes and API replicas."""
    with db.session() as session:
        try:
            job_id = queue.enqueue(session, KIND, {"version": version}).id
            session.commit()
            return job_id
        except IntegrityError as exc:
            session.rollback()
            raise ActivationRunningError(
                f"activation job {running_activation(db)} is already queued or running"
            ) from exc


def running_activation(db: Database) -> int | None:
    """The id of a queued or running activation job, if any."""
    with db.session() as session:
        return session.scalar(
            select(Job.id).where(Job.kind == KIND, Job.status.in_([queue.QUEUED, queue.RUNNING])).limit(1)
        )


def _missing(session: Any, version: str, after: int, limit: int) -> list[tuple[int, str]]:
    has_code = select(Code.image_id).where(Code.image_id == Image.id, Code.model_version == version).exists()
    query = select(Image.id, Image.stored_path).where(Image.id > after, ~has_code).order_by(Image.id).limit(limit)
    return [(int(i), str(p)) for i, p in session.execute(query)]


def run_activation(context: JobContext) -> dict[str, Any]:
    version = str(context.job.params["version"])
    settings = context.settings
    with context.db.session() as session:
        row = repository.model_by_version(session, version)
        total = int(session.scalar(select(func.count()).select_from(Image)) or 0)
    if row is None:
        raise JobFailedError(f"model {version} is not registered", code="model_not_found")
    try:
        encoder = load_registered(context.store, row)
    except (CheckpointError, OSError) as exc:
        raise JobFailedError(f"model {version} cannot be loaded: {exc}", code="model_unavailable") from exc
    encoded = done = 0
    context.progress(0, total)
    for _final in (False, True):  # the second pass takes the images stored while the first one ran
        after = 0
        while True:
            with context.db.session() as session:
                batch = _missing(session, version, after, settings.ingest_batch_size)
            if not batch:
                break
            after = batch[-1][0]
            reencoded = encode_stored(context.store, encoder, batch, settings.max_pixels)
            for image_id, problem in reencoded.failed:
                context.item_error(str(image_id), "unreadable_image", str(problem))
            if reencoded.ids:
                with context.db.session() as session:
                    session.add_all(
                        Code(image_id=i, model_version=version, code=c.tobytes())
                        for i, c in zip(reencoded.ids, reencoded.codes, strict=True)
                    )
                    session.commit()
                encoded += len(reencoded.ids)
            done += len(batch)
            context.progress(min(done, max(total, done)), max(total, done))
    with context.db.session() as session:
        active = repository.active_model(session)
    removed = 0
    if active is not None and active.version != version:
        removed = remove_codes_except(context.db, [version, active.version])
    if settings.index_backend == "milvus":
        already = active is not None and active.version == version
        await_collection(context, version, already_active=already, report=lambda: context.progress(done, done))
    with context.db.session() as session:
        repository.activate_model(session, version)
        if settings.index_backend == "milvus":
            cursors.retire_others(session, keep=version)
        session.commit()
    return {"version": version, "encoded": encoded, "removed_codes": removed}


def await_collection(context: JobContext, version: str, *, already_active: bool, report: Callable[[], None]) -> None:
    """The Milvus backend: ask the indexer for ``version``'s collection (unless it is the active model's, ready
    already) and wait until it is built and holds every change committed before it was built; then the switch.
    ``report`` is called between looks (progress: a cancel or a stopping worker ends the wait).

    A wait that ends otherwise (cancelled, the worker stopping, a failure) retires the collection again unless
    it is the active model's, so that the indexer does not keep it up to date for nothing.

    Raises:
        JobFailedError: (``indexer_unavailable``) the collection's cursor did not move (nor a build touch it) for
            ``job_stale_after_s``.
    """
    with context.db.session() as session:
        cursor = cursors.cursor_of(session, version)
        if not (already_active and cursor is not None and cursor.state == cursors.READY):
            cursors.request(session, version)
            session.commit()
    try:
        _wait_built(context, version, report)
    except Exception:
        with contextlib.suppress(SQLAlchemyError), context.db.session() as session:
            cursors.retire_unless_active(session, version)
            session.commit()
        raise


def _wait_built(context: JobContext, version: str, report: Callable[[], None]) -> None:
    settings = context.settings
    target: int | None = None
    seen, quiet_until = None, time.monotonic() + settings.job_stale_after_s
    while True:
        with context.db.session() as session:
            cursor = cursors.cursor_of(session, version)
            if target is None and cursor is not None and cursor.state == cursors.READY:
                target = repository.last_change(session)  # built: now catch up to what is committed
        if cursor is None or cursor.state == cursors.RETIRED:
            raise JobFailedError(f"the collection of model {version} was retired meanwhile", code="index_retired")
        if target is not None and cursor.change >= target:
            return
        if cursor != seen:
            seen, quiet_until = cursor, time.monotonic() + settings.job_stale_after_s
        elif time.monotonic() > quiet_until:
            raise JobFailedError(
                f"the indexer did not build the collection of model {version} (no progress for "
                f"{settings.job_stale_after_s:.0f} s): is a metah worker running?",
                code="indexer_unavailable",
            )
        report()
        time.sleep(max(settings.indexer_poll_s, AWAIT_POLL_S))


def remove_codes_except(db: Database, keep: list[str]) -> int:
    """Delete the codes of every model version not in ``keep``, a range of image ids per transaction (writers
    wait for one range at most); returns how many were deleted. A retry after a kill goes on where it stopped."""
    with db.session() as session:
        last = repository.max_coded_image(session)
    removed = 0
    for first in range(1, last + 1, repository.ROW_CHUNK):
        with db.session() as session:
            removed += repository.delete_codes_except(session, keep, first, first + repository.ROW_CHUNK - 1)
            session.commit()
    if removed:
        log.info("removed %d codes of model versions other than %s", removed, ", ".join(keep))
    return removed
