"""What the service holds while it runs: settings, database, blob store and the serving pair.

Opened in the app's lifespan (:func:`open_runtime`), never at import; tests get it from a real server.

Two index backends (``METAH_INDEX_BACKEND``): ``faiss`` (the codes in this process, kept up to date by
:class:`service.follow.ChangeFollower` and by the API's own writes) and ``milvus`` (the active model's Milvus
collection, read only: :mod:`service.remote_index`; the elected indexer applies every write, and a write here
waits for it, up to ``index_wait_s``: :meth:`Runtime.wait_indexed`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread
import numpy.typing as npt
import torch
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from index.errors import HashIndexError
from model.errors import CheckpointError
from service import cursors
from service.batching import EncodeBatcher
from service.cursors import INDEX_UNAVAILABLE
from service.db import Database
from service.errors import NotReadyError
from service.follow import ChangeFollower
from service.limits import CpuSlots, InlineGate, WouldWait
from service.migrate import current_revision, head_revision
from service.models import Job
from service.observability import Metrics
from service.registry import open_active_pair, save_snapshot
from service.serving import ActivePair, ServingPair
from service.settings import Settings
from service.storage import BlobStore, BlobStoreError, open_blob_store

log = logging.getLogger(__name__)

T = TypeVar("T")

INLINE_BUDGET_S = 0.005  # searches that recently took at most this may run on the event loop (InlineGate)
INLINE_MAX_PIXELS = 512 * 512  # … if their upload is no larger (a PNG this size decodes in about 2 ms here)


class Follower(Protocol):
    """What the runtime asks of its follower (:class:`ChangeFollower`, or
    :class:`service.remote_index.RemoteFollower` on the Milvus backend)."""

    @property
    def cursor(self) -> int | None: ...

    def catch_up(self) -> int: ...

    def advance(self, change: int) -> None: ...

    def follow_activation(self) -> bool: ...


@dataclass
class Runtime:
    """The service's parts.

    Attributes:
        active: the serving (model, index) pair; ``None`` while no model is available (``problem`` says why:
            the 503 that model-dependent requests get).
        write_lock: serialises blob writes/deletes with the commits that reference them, and index writes,
            within this process.
        cpu: bounds concurrent CPU-heavy calls (decode, encode, search) to the number of cores, and the requests
            waiting for one to ``settings.cpu_queue`` (then 429).
        encodes: the searches' encodes, in forward passes shared by concurrent searches (:mod:`service.batching`).
        inline: when a search runs on the event loop instead of a worker thread (:class:`InlineGate`): only
            with the embedded stack (FAISS in this process, SQLite), where a search makes no network round trip.
    """

    settings: Settings
    db: Database
    store: BlobStore
    active: ActivePair | None
    problem: NotReadyError | None = None
    follower: Follower | None = None
    stop_indexer: Callable[[], None] | None = None  # this process's indexer candidate (Milvus Lite)
    milvus: Any = None  # the MilvusClient on the Milvus backend
    metrics: Metrics = field(default_factory=Metrics)
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    cpu: CpuSlots = field(init=False)
    encodes: EncodeBatcher = field(init=False)
    inline: InlineGate = field(init=False)

    def __post_init__(self) -> None:
        self.cpu = CpuSlots(os.cpu_count() or 1, self.settings.cpu_queue)
        self.encodes = EncodeBatcher(self.cpu, self.metrics.pass_images.observe)
        embedded = self.settings.index_backend == "faiss" and self.db.engine.dialect.name == "sqlite"
        self.inline = InlineGate(INLINE_BUDGET_S, INLINE_MAX_PIXELS, enabled=embedded)

    async def run_cpu(self, function: Callable[..., T], *args: object) -> T:
        """Run CPU work (decode, encode) in a worker thread holding one of the ``cpu`` slots throughout (429 when
        too many wait for one)."""

        def in_slot() -> T:
            with self.cpu.slot():
                return function(*args)

        with self.cpu.admitted():
            return await anyio.to_thread.run_sync(in_slot)

    async def run_search(self, function: Callable[..., T], *args: object) -> T:
        """Run a search, ``function(*args, may_wait=...)``, which takes a ``cpu`` slot only around its CPU stages
        (its database round trips leave the slot free); admitted like :meth:`run_cpu`. It runs on the event loop
        when :attr:`inline` allows (``may_wait=False``: where it would wait it raises :class:`WouldWait`, and
        runs again in a worker thread), else in a worker thread (``may_wait=True``)."""
        runs = self.metrics.search_runs
        with self.cpu.admitted():
            if self.inline.allows(self.cpu.admitted_now):
                try:
                    answer = self.inline.timed(partial(function, *args, may_wait=False))
                except WouldWait:
                    pass
                else:
                    runs.labels("loop").inc()
                    return answer
            answer = await anyio.to_thread.run_sync(self.inline.timed, partial(function, *args, may_wait=True))
            runs.labels("thread").inc()
            return answer

    async def run_io(self, function: Callable[..., T], *args: object) -> T:
        """Run blocking I/O (database, files) in a worker thread of the default pool."""
        return await anyio.to_thread.run_sync(function, *args)

    def applied_change(self) -> int | None:
        """The last change of the log that the serving index holds, read without a lock (``None``: no follower)."""
        return self.follower.cursor if self.follower is not None else None

    def serve(self, pair: ServingPair) -> None:
        """Serve ``pair`` from now on (the first one, after a start that had none yet, or the next model)."""
        if self.active is None:
            self.active, self.problem = ActivePair(pair), None
        else:
            self.active.swap(pair)

    def index_added(
        self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, model_version: str, change: int
    ) -> None:
        """This process committed ``change`` adding these codes: the FAISS index takes them now (the Milvus
        indexer applies them; see :meth:`wait_indexed`). Called under ``write_lock``."""
        active = self.active if self.settings.index_backend == "faiss" else None
        if active is not None and active.add(ids, codes, domain, model_version=model_version, change=change):
            self._advance(change)

    def index_removed(self, ids: npt.ArrayLike, *, change: int) -> None:
        """This process committed ``change`` deleting these ids (as :meth:`index_added`)."""
        if self.settings.index_backend == "faiss" and self.active is not None:
            self.active.remove(ids, change=change)
            self._advance(change)

    def _advance(self, change: int) -> None:
        if self.follower is not None:
            self.follower.advance(change)

    def wait_indexed(self, change: int) -> bool:
        """On the Milvus backend, wait (up to ``index_wait_s``) until the indexer has applied ``change``, so that
        a request after this one's response finds it; ``False`` when it did not in time (logged)."""
        if self.settings.index_backend != "milvus":
            return True
        if cursors.wait_indexed(self.db, change, self.settings.index_wait_s):
            return True
        log.warning("change %d not indexed within %.1f s: acknowledged anyway", change, self.settings.index_wait_s)
        return False

    def catch_up(self) -> None:
        """Apply other processes' writes (job workers) to the serving index (see :mod:`service.follow`)."""
        if self.follower is not None:
            self.follower.catch_up()

    def follow_activation(self) -> None:
        """Serve the model the database marks active, if another process activated one."""
        if self.follower is not None:
            self.follower.follow_activation()

    def close(self) -> None:
        if self.stop_indexer is not None:
            self.stop_indexer()
        if self.milvus is not None:
            from index.milvus import disconnect

            disconnect(self.milvus, str(self.settings.milvus_uri))
        if self.active is not None and self.settings.index_backend == "faiss":
            try:
                save_snapshot(self.settings, self.active.current)
            except (OSError, HashIndexError) as exc:
                log.warning("index snapshot not saved (the next start rebuilds it): %s", exc)
        self.db.close()


def open_runtime(settings: Settings, metrics: Metrics) -> Runtime:
    """Open the database and load the active model and its index (blocking: call it in a thread); the runtime
    reports to ``metrics`` (the app's, which its middleware reports to as well)."""
    torch.set_num_threads(settings.torch_threads)  # single-image inference: more threads only add overhead
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    store = open_blob_store(settings)
    runtime = partial(Runtime, settings, db, store, metrics=metrics)
    revision, head = current_revision(settings.sqlalchemy_url), head_revision()
    if revision != head:
        message = f"the database is at revision {revision}, this code needs {head}: run `metah migrate`"
        log.error(message)
        return runtime(None, NotReadyError(message, code="database_not_migrated"))
    if settings.index_backend == "milvus":
        return _open_remote_runtime(settings, db, store, metrics)
    try:
        pair = open_active_pair(settings, db, store)
    except BlobStoreError as exc:
        log.error("no model is served: %s", exc)
        problem = NotReadyError(f"the active model cannot be read: the blob store is unavailable: {exc.reason}")
        return runtime(None, problem)
    except (CheckpointError, HashIndexError, OSError) as exc:
        log.error("no model is served: %s", exc)
        problem = NotReadyError(f"the active model cannot be loaded: {exc}", code="model_unavailable")
        return runtime(None, problem)
    if pair is None:
        problem = NotReadyError("no model is registered: set METAH_MODEL or train one", code="no_model")
        return runtime(None, problem)
    active = ActivePair(pair)
    return runtime(active, follower=ChangeFollower(settings, db, store, active))


def _open_remote_runtime(settings: Settings, db: Database, store: BlobStore, metrics: Metrics) -> Runtime:
    """The Milvus backend: no model is served until Milvus answers and the active model's collection is ready
    (503 meanwhile); the follower connects, starts the indexer on Milvus Lite, and keeps looking."""
    from service.remote_index import RemoteFollower

    waiting = NotReadyError(f"connecting to Milvus at {settings.milvus_uri}", code=INDEX_UNAVAILABLE)
    runtime = Runtime(settings, db, store, None, waiting, metrics=metrics)
    runtime.follower = RemoteFollower(settings, db, store, runtime)
    runtime.follow_activation()
    return runtime


def read_state(runtime: Runtime) -> tuple[int | None, dict[tuple[str, str], int]]:
    """What ``/metrics`` reports at scrape time: the serving index's size and the jobs by kind and status."""
    try:
        indexed = len(runtime.active.current.index) if runtime.active is not None else None
    except NotReadyError:  # a Milvus that does not answer: /readyz says so
        indexed = None
    try:
        with runtime.db.session() as session:
            rows = session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)).all()
    except SQLAlchemyError:  # database down or not migrated: /readyz says so; metrics stay available
        log.warning("job counts unavailable for /metrics", exc_info=True)
        return indexed, {}
    return indexed, {(str(kind), str(status)): int(count) for kind, status, count in rows}
