"""API replicas on the Milvus backend: the serving pair's index is the active model's collection, read only.

An API replica keeps no codes and loads no snapshot: :func:`open_remote_pair` opens the collection of the
active model once the indexer (:mod:`service.indexer`) reports it ``ready``, and :class:`RemoteFollower` swaps
in the next model when the database marks another one active (its collection is ready before that: the
activation job waits for it). Searches see every change up to the collection's stored cursor: on a Milvus
server each search first reads the cursor's Milvus timestamp (``write_ts``) and passes it as
``guarantee_timestamp`` (:class:`RemoteIndex`), a wait only when the indexer wrote in the last moments. Writes
never reach Milvus from here: the API waits for the indexer instead (:func:`service.cursors.wait_indexed`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy.typing as npt
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from index.errors import HashIndexError
from index.hits import Hits
from index.milvus import MilvusIndex, connect
from model.errors import CheckpointError
from service import cursors, repository
from service.cursors import INDEX_NOT_READY, INDEX_UNAVAILABLE, READY
from service.db import Database
from service.errors import ModelSwitchedError, NotReadyError
from service.indexer import CONNECT_TIMEOUT_S, milvus_options, start_indexer
from service.registry import active_or_registered, load_registered
from service.serving import ActivePair, ServingPair
from service.settings import Settings
from service.storage import BlobStore, BlobStoreError

log = logging.getLogger(__name__)

# A search (or count) that Milvus does not answer in this long (retries included) is a 503, not a hung request.
REQUEST_TIMEOUT_S = 5


class ReadOnlyIndexError(Exception):
    """An API replica tried to write to a Milvus collection: only the indexer writes."""


@contextmanager
def milvus_errors() -> Iterator[None]:
    """A Milvus that fails a request (down, restarting, its collection gone) is a 503 ``index_unavailable``."""
    try:
        yield
    except MilvusException as exc:
        log.warning("Milvus request failed: %s", exc)
        raise NotReadyError(f"Milvus is unavailable: {exc.message}", code=INDEX_UNAVAILABLE) from exc


class RemoteIndex:
    """A :class:`index.protocol.CodeIndex` view of a model's Milvus collection for searches that see every change
    the indexer stored as applied (see the module docstring); writes raise :class:`ReadOnlyIndexError`."""

    def __init__(self, index: MilvusIndex, db: Database) -> None:
        self.index = index
        self.db = db

    @property
    def bits(self) -> int:
        return self.index.bits

    @property
    def model_version(self) -> str:
        return self.index.model_version

    @property
    def last_change(self) -> int:
        with self.db.session() as session:
            cursor = cursors.cursor_of(session, self.model_version)
        return 0 if cursor is None else cursor.change

    def __len__(self) -> int:
        timestamp = self._last_write()
        with milvus_errors():
            return self.index.count(guarantee_timestamp=timestamp)

    def domains(self) -> dict[str, int]:
        timestamp = self._last_write()
        with milvus_errors():
            return self.index.domains(guarantee_timestamp=timestamp)

    def _cursor(self) -> cursors.Cursor | None:
        with self.db.session() as session:
            return cursors.cursor_of(session, self.model_version)

    def _last_write(self) -> int | None:
        """:meth:`_timestamp` of the stored cursor, read only where there is a write to wait for (not on Lite)."""
        return None if self.index.milvus.lite else self._timestamp(self._cursor())

    def _timestamp(self, cursor: cursors.Cursor | None) -> int | None:
        """The Milvus timestamp of the indexer's last write (``None`` on Lite: one process, reads see writes)."""
        return None if self.index.milvus.lite or cursor is None or cursor.write_ts == 0 else cursor.write_ts

    def _guarantee(self) -> int | None:
        """What a search waits for: :meth:`_timestamp` of a collection that still follows the changes.

        Raises:
            ModelSwitchedError: the collection no longer follows the changes (another model was activated: this
                replica has not swapped yet, and would miss what was written since).
        """
        cursor = self._cursor()
        if cursor is None or cursor.state != READY:
            raise ModelSwitchedError(f"model {self.model_version} is no longer the active one: switching")
        return self._timestamp(cursor)

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        domain: str | None = None,
        max_distance: int | None = None,
        model_version: str | None = None,
        wait: bool = True,
    ) -> list[Hits]:
        guarantee = self._guarantee()  # (``wait`` is unused: see MilvusIndex.search)
        with milvus_errors():
            return self.index.search(
                queries,
                k,
                domain=domain,
                max_distance=max_distance,
                model_version=model_version,
                guarantee_timestamp=guarantee,
            )

    def range_search(
        self, queries: npt.ArrayLike, radius: int, *, domain: str | None = None, model_version: str | None = None
    ) -> list[Hits]:
        guarantee = self._guarantee()
        with milvus_errors():
            return self.index.range_search(
                queries, radius, domain=domain, model_version=model_version, guarantee_timestamp=guarantee
            )

    def add(self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, change: int | None = None) -> None:
        raise ReadOnlyIndexError("API replicas do not write to Milvus: the indexer applies the changes log")

    def upsert(self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, change: int | None = None) -> None:
        raise ReadOnlyIndexError("API replicas do not write to Milvus: the indexer applies the changes log")

    def remove(self, ids: npt.ArrayLike, *, change: int | None = None) -> int:
        raise ReadOnlyIndexError("API replicas do not write to Milvus: the indexer applies the changes log")


def open_remote_pair(settings: Settings, db: Database, store: BlobStore, client: MilvusClient) -> ServingPair | None:
    """The active model with its collection; registers ``settings.model`` first when the registry has no active
    model. ``None`` when there is no model at all.

    Raises:
        NotReadyError: (``index_not_ready``) the indexer has not built the active model's collection yet.
    """
    if (row := active_or_registered(settings, db, store)) is None:
        return None
    with db.session() as session:
        cursor = cursors.cursor_of(session, row.version)
    if cursor is None or cursor.state != READY:
        raise NotReadyError(
            f"the indexer has not built the collection of model {row.version} yet (it runs in a metah worker, "
            "or in metah serve on Milvus Lite)",
            code=INDEX_NOT_READY,
        )
    encoder = load_registered(store, row)
    index = MilvusIndex(client, row.bits, row.version, milvus=milvus_options(settings, timeout_s=REQUEST_TIMEOUT_S))
    log.info("serving model %s from Milvus collection %s (change %d)", row.version, index.name, cursor.change)
    return ServingPair(encoder, RemoteIndex(index, db))


class Host(Protocol):
    """What :class:`RemoteFollower` keeps up to date: the runtime (:class:`service.runtime.Runtime`)."""

    active: ActivePair | None
    problem: NotReadyError | None
    milvus: Any
    stop_indexer: Callable[[], None] | None

    def serve(self, pair: ServingPair) -> None: ...


class RemoteFollower:
    """Connects to Milvus (again, until it answers), starts this process's indexer candidate on Milvus Lite, and
    serves the active model's collection once it is ready, then the next one after each activation."""

    cursor: int | None = None  # searches never catch up here: the indexer applies the changes

    def __init__(self, settings: Settings, db: Database, store: BlobStore, host: Host) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.host = host
        self._swapping = threading.Lock()  # the background loop and a search that found its model retired

    def catch_up(self) -> int:
        return 0

    def advance(self, change: int) -> None:
        """Nothing to do: the indexer applies the API's writes too."""

    def follow_activation(self) -> bool:
        """Serve the active model's collection when it is not the one served; ``True`` if it changed. Until a
        first model is served, the host's ``problem`` says why not (the 503 of model-dependent requests)."""
        with self._swapping:
            return self._follow_activation()

    def _follow_activation(self) -> bool:
        host = self.host
        if host.milvus is None and not self._connect():
            return False
        with self.db.session() as session:
            row = repository.active_model(session)
        if row is not None and host.active is not None and host.active.current.model_version == row.version:
            return False
        try:
            pair = open_remote_pair(self.settings, self.db, self.store, host.milvus)
        except NotReadyError as exc:
            return self._not_yet(exc)
        except BlobStoreError as exc:
            reason = f"the active model cannot be read: the blob store is unavailable: {exc.reason}"
            return self._not_yet(NotReadyError(reason))
        except (CheckpointError, HashIndexError, MilvusException, OSError) as exc:
            return self._not_yet(NotReadyError(f"the active model cannot be loaded: {exc}", code="model_unavailable"))
        if pair is None:
            return self._not_yet(NotReadyError("no model is registered: set METAH_MODEL or train one", code="no_model"))
        host.serve(pair)
        return True

    def _connect(self) -> bool:
        uri = str(self.settings.milvus_uri)
        try:
            self.host.milvus, _ = connect(uri, timeout_s=CONNECT_TIMEOUT_S)
        except MilvusException as exc:
            message = f"Milvus at {uri} cannot be reached (tried again every few seconds): {exc.message}"
            return self._not_yet(NotReadyError(message, code=INDEX_UNAVAILABLE))
        if self.settings.milvus_lite:  # one process opens a Lite file: this one indexes too
            self.host.stop_indexer = start_indexer(self.settings, self.db, self.store, self.host.milvus).stop
        return True

    def _not_yet(self, problem: NotReadyError) -> bool:
        if self.host.active is None:
            if self.host.problem is None or self.host.problem.message != problem.message:
                log.warning("%s", problem)
            self.host.problem = problem
        return False
