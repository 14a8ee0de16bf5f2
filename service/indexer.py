"""The one indexer of the Milvus backend: applies the ``changes`` log to each model version's collection.

PostgreSQL (or SQLite) stays the source of truth and ``changes`` the outbox. Every process that may index runs
an :class:`IndexerThread`; one of them is elected (:class:`service.election.Leadership`) and runs
:meth:`Indexer.run_round` every ``indexer_poll_s``; the others try to take over every ``changes_poll_s``.
Which processes are candidates: with a Milvus server every ``metah worker`` (those ``metah serve`` starts
included); with Milvus Lite, which only one process can open, the ``metah serve`` process.

A round, for each row of ``index_cursors`` (:mod:`service.cursors`):

* ``requested``: build the collection from the ``codes`` table (``last_change`` read first, so a change
  committed during the scan is applied again after it: harmless), encode the images that have no code of that
  model yet (stored by a process on the previous model), then ``ready`` at that change;
* ``ready``: read the changes after its ``change`` a chunk at a time, upsert the added codes and remove the
  deleted ids, then store the new ``change`` and the Milvus timestamp of the writes (``write_ts``).

Idempotent: upserts and removes may be applied twice (a leader killed between its Milvus writes and its cursor
update is followed by one that applies the same chunk again). Each chunk's cursor update is fenced: it is
written only while the lock is still held, and only to a row still ``ready`` (not retired or asked again).

A deposed leader (its lock connection cut while its process runs on) asks whether it still leads before each
write (and every :data:`TOUCH_S` of a build), so it stops within one check and one request, but Milvus has no
conditional write: an upsert it sent just before it lost the lock may land after the new leader removed that
image, and bring it back. So a leader that takes over heals: once :data:`TAKEOVER_GRACE_S` (longer than any write
the old leader could still have under way) has passed, it removes again every image deleted after the point
each collection had reached when it took over (a ``ready`` row's ``change``; a ``requested`` row's build start).
In between, such an image can be in Milvus without a row: searches never return it (the service drops hits that
have no row), only the per-domain counts of ``/readyz`` can count it.
The active model always has a row (asked for when missing). On a server the alias ``{prefix}_active`` names the
active model's collection (Milvus Lite has no aliases). Of the ``retired`` collections only the newest (the
previous model's) is kept; older ones are dropped and their rows forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException
from sqlalchemy.exc import DBAPIError

from index.errors import HashIndexError
from index.hash_index import Entry
from index.milvus import MilvusIndex, MilvusOptions, collection_name, connect, disconnect
from model.errors import CheckpointError
from model.export import LoadedEncoder
from service import cursors, outbox, repository
from service.cursors import READY, REQUESTED, RETIRED, Cursor
from service.db import Database
from service.election import Leadership
from service.models import ModelVersion
from service.registry import load_registered
from service.settings import Settings
from service.storage import BlobStore, BlobStoreError

log = logging.getLogger(__name__)

ALIAS = "active"  # the stable name: ``{prefix}_active``
TOUCH_S = 5.0  # how often a build touches its cursor row
REQUEST_TIMEOUT_S = 60  # the indexer's Milvus requests, retries included
STOP_WAIT_S = 10.0  # how long stopping waits for a round still in a Milvus request (the thread is a daemon)
# A deposed leader's last write lands within one check interval and one request of its losing the lock.
TAKEOVER_GRACE_S = TOUCH_S + REQUEST_TIMEOUT_S + 5.0
CONNECT_TIMEOUT_S = 3.0  # a Milvus that does not answer in this long is tried again at the next round
# What stops a round; the next one (after a pause, maybe in another process) starts again from the cursors.
ROUND_ERRORS = (DBAPIError, MilvusException, HashIndexError, BlobStoreError, CheckpointError, OSError)


class LostLeadershipError(Exception):
    """Another process may lead now: this one stops writing."""


@dataclass(frozen=True)
class _Heal:
    """After a take-over: at ``due`` (monotonic), remove again the images deleted after ``after[version]``."""

    due: float
    after: dict[str, int]


class Indexer:
    """The leader's work: builds and follows the collections named in ``index_cursors``."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: BlobStore,
        client: MilvusClient,
        milvus: MilvusOptions,
        chunk: int = outbox.CHUNK,
        grace_s: float = TAKEOVER_GRACE_S,
    ) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.client = client
        self.milvus = milvus
        self.chunk = chunk
        self.grace_s = grace_s
        self._heal: _Heal | None = None
        self._indexes: dict[str, MilvusIndex] = {}
        self._encoders: dict[str, LoadedEncoder] = {}
        self._aliased: str | None = None

    @property
    def alias(self) -> str:
        return f"{self.milvus.prefix}_{ALIAS}"

    def took_over(self) -> None:
        """This process has just become the leader: heal after the grace period, from where each collection is
        now (see the module docstring)."""
        with self.db.session() as session:
            rows = cursors.all_cursors(session)
        after = {version: cursor.change for version, cursor in rows.items() if cursor.state != RETIRED}
        self._heal = _Heal(time.monotonic() + self.grace_s, after)

    def run_round(self, held: Callable[[], bool] = lambda: True) -> int:
        """Build what is asked for, apply the new changes; returns how many changes were applied."""
        with self.db.session() as session:
            if cursors.request_active(session):
                session.commit()
            active = repository.active_model(session)
            rows = cursors.all_cursors(session)
            models = {model.version: model for model in repository.list_models(session)}
        applied = 0
        for version, cursor in sorted(rows.items()):
            if version not in models:  # a model removed from the registry
                continue
            if cursor.state == REQUESTED:
                self._build(models[version], held)
            elif cursor.state == READY:
                applied += self._follow(models[version], cursor, held)
        if active is not None:
            self._point_alias(active.version)
        self._drop_retired(rows, held)
        if self._heal is not None and time.monotonic() >= self._heal.due:
            self._heal_deletes(self._heal, models, held)
            self._heal = None
        return applied

    def _heal_deletes(self, heal: _Heal, models: dict[str, ModelVersion], held: Callable[[], bool]) -> None:
        """Remove again what was deleted after the take-over point of each collection still followed."""
        with self.db.session() as session:
            rows = cursors.all_cursors(session)
        for version, after in sorted(heal.after.items()):
            cursor = rows.get(version)
            if cursor is None or cursor.state != READY or version not in models:
                continue  # retired or asked again since: a build after the grace period needs no healing
            if (index := self._index(models[version])) is None:
                continue
            removed = 0
            for ids in outbox.deleted_ids(self.db, after, cursor.change, self.chunk):
                if ids.size:
                    _check(held)
                    removed += index.remove(ids)
            log.info(
                "indexer: took over: changes %d..%d of model %s healed (%d removed again)",
                after,
                cursor.change,
                version,
                removed,
            )

    def _drop_retired(self, rows: dict[str, Cursor], held: Callable[[], bool]) -> None:
        """Keep the newest retired collection (the previous model's: the rollback target, and what a replica not
        yet swapped still searches for a moment); drop the older ones and forget their rows (an activation of
        such a model asks for its collection anew, built from the codes)."""
        retired = sorted(
            (c for c in rows.values() if c.state == RETIRED), key=lambda c: (c.updated_at, c.model_version)
        )
        for cursor in retired[:-1]:
            _check(held)
            name = collection_name(self.milvus.prefix, cursor.model_version)
            self._indexes.pop(cursor.model_version, None)
            if self.client.has_collection(name):
                self._unalias(cursor.model_version)
                self.client.drop_collection(name)
                log.info("indexer: dropped collection %s of retired model %s", name, cursor.model_version)
            with self.db.session() as session:
                cursors.forget_retired(session, cursor.model_version)
                session.commit()

    def _build(self, model: ModelVersion, held: Callable[[], bool]) -> None:
        version = model.version
        self._indexes.pop(version, None)
        self._unalias(version)
        with self.db.session() as session:
            last = repository.last_change(session)  # first: a change committed during the scan is applied again
            cursors.building(session, version, last)
            session.commit()
            _check(held)
            index = MilvusIndex.build(
                self.client,
                self._touching(repository.iter_codes(session, version), version, held),
                bits=model.bits,
                model_version=version,
                milvus=self.milvus,
                last_change=last,
            )
        for domain, (ids, codes) in outbox.missing_codes(self.db, version, self._encode(model)).by_domain.items():
            _check(held)
            index.upsert(ids, codes, domain)
        self._fenced(version, REQUESTED, last, index, held)
        self._indexes[version] = index
        log.info("indexer: collection %s of model %s built (change %d)", index.name, version, last)

    def _touching(self, rows: Iterable[Entry], version: str, held: Callable[[], bool]) -> Iterator[Entry]:
        """``rows``, touching ``version``'s cursor every :data:`TOUCH_S` while they are read (a long build is seen
        to progress by the activation that waits for it) while this process still leads."""
        touched = time.monotonic()
        for row in rows:
            yield row
            if time.monotonic() - touched >= TOUCH_S:
                _check(held)
                with self.db.session() as session:
                    cursors.touch(session, version)
                    session.commit()
                touched = time.monotonic()

    def _follow(self, model: ModelVersion, cursor: Cursor, held: Callable[[], bool]) -> int:
        if (index := self._index(model)) is None:
            return 0
        after, applied, encode = cursor.change, 0, self._encode(model)
        while (batch := outbox.read_changes(self.db, model.version, after, encode, self.chunk)) is not None:
            _check(held)
            for domain, (ids, codes) in batch.added.by_domain.items():
                index.upsert(ids, codes, domain, change=batch.last)
            if batch.deleted.size:
                index.remove(batch.deleted, change=batch.last)
            if not self._fenced(model.version, READY, batch.last, index, held):
                return applied
            after, applied = batch.last, applied + batch.count
        return applied

    def _fenced(self, version: str, expect: str, change: int, index: MilvusIndex, held: Callable[[], bool]) -> bool:
        """Store ``version``'s cursor while this process still leads; ``False``: the row changed meanwhile."""
        _check(held)
        with self.db.session() as session:
            updated = cursors.mark(session, version, expect=expect, change=change, write_ts=index.write_timestamp)
            session.commit()
        return updated == 1

    def _index(self, model: ModelVersion) -> MilvusIndex | None:
        """The collection of a ``ready`` row; ``None`` when it is gone (a new Milvus): it is asked for again."""
        index = self._indexes.get(model.version)
        if index is None:
            if not self.client.has_collection(collection_name(self.milvus.prefix, model.version)):
                log.warning("indexer: the collection of model %s is gone: building it again", model.version)
                with self.db.session() as session:
                    cursors.request(session, model.version)
                    session.commit()
                return None
            index = MilvusIndex(self.client, model.bits, model.version, milvus=self.milvus)
            self._indexes[model.version] = index
        return index

    def _encode(self, model: ModelVersion) -> outbox.Encode:
        """Encodes an image that has no code of ``model`` yet (its encoder is loaded the first time it is needed)."""

        def encode(image_id: int, stored_path: str) -> bytes | None:
            if (encoder := self._encoders.get(model.version)) is None:
                encoder = self._encoders[model.version] = load_registered(self.store, model)
            max_pixels = self.settings.max_pixels
            return outbox.encode_and_store(self.db, self.store, encoder, image_id, stored_path, max_pixels)

        return encode

    def _point_alias(self, version: str) -> None:
        if self.milvus.lite:
            return
        name = collection_name(self.milvus.prefix, version)
        if self._aliased == name or not self.client.has_collection(name):
            return
        try:
            current: Any = self.client.describe_alias(self.alias).get("collection_name")
        except MilvusException:
            current = None
        if current is None:
            self.client.create_alias(name, self.alias)
        elif current != name:
            self.client.alter_alias(name, self.alias)
        self._aliased = name
        log.info("indexer: alias %s names %s (model %s)", self.alias, name, version)

    def _unalias(self, version: str) -> None:
        """Before a collection is dropped and built again: Milvus refuses to drop one an alias names."""
        name = collection_name(self.milvus.prefix, version)
        if self.milvus.lite or not self.client.has_collection(name):
            return
        for alias in self.client.list_aliases(name).get("aliases", []):
            self.client.drop_alias(alias)
        if self._aliased == name:
            self._aliased = None


def _check(held: Callable[[], bool]) -> None:
    """Before a write: stop unless this process still leads."""
    if not held():
        raise LostLeadershipError("the indexer lock is no longer held")


class IndexerThread:
    """A candidate for the indexer in this process: tries to lead, and runs rounds while it does. ``connect``
    makes its Milvus client (tried again until Milvus answers); ``disconnect`` closes it when the thread ends."""

    def __init__(
        self,
        settings: Settings,
        leadership: Leadership,
        make: Callable[[MilvusClient], Indexer],
        connect: Callable[[], MilvusClient],
        disconnect: Callable[[MilvusClient], None],
    ) -> None:
        self.settings = settings
        self.leadership = leadership
        self.make, self.connect, self.disconnect = make, connect, disconnect
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.run, name="indexer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)
        if self._thread.is_alive():
            log.warning("indexer: a round is still waiting for Milvus after %.0f s: not waiting longer", STOP_WAIT_S)

    def run(self) -> None:
        settings = self.settings
        client: MilvusClient | None = None
        indexer: Indexer | None = None
        while not self.stopping.is_set():
            pause = settings.changes_poll_s
            try:
                if indexer is None:
                    client = self.connect()
                    indexer = self.make(client)
                leading = self.leadership.leading
                if self.leadership.try_acquire():
                    if not leading:
                        indexer.took_over()
                    busy = indexer.run_round(self.leadership.held) > 0
                    pause = 0.0 if busy else settings.indexer_poll_s
            except LostLeadershipError as exc:
                log.warning("indexer: %s", exc)
                self.leadership.release()
            except ROUND_ERRORS as exc:
                log.warning("indexer round failed (again in %.1f s): %s", settings.changes_poll_s, exc)
                self.leadership.release()
            except Exception:
                log.exception("indexer round crashed (again in %.1f s)", settings.changes_poll_s)
                self.leadership.release()
            self.stopping.wait(pause)
        self.leadership.release()
        if client is not None:
            self.disconnect(client)


def start_indexer(
    settings: Settings, db: Database, store: BlobStore, client: MilvusClient | None = None
) -> IndexerThread:
    """Run an indexer candidate in this process (see the module docstring for which processes do) with
    ``client``, or with a client of its own to ``settings.milvus_uri`` (``None``)."""
    uri = str(settings.milvus_uri)
    thread = IndexerThread(
        settings,
        Leadership(db),
        lambda milvus: Indexer(settings, db, store, milvus, milvus_options(settings)),
        (lambda: client) if client is not None else lambda: connect(uri, timeout_s=CONNECT_TIMEOUT_S)[0],
        (lambda _: None) if client is not None else lambda milvus: disconnect(milvus, uri),
    )
    thread.start()
    return thread


def milvus_options(settings: Settings, *, timeout_s: int = REQUEST_TIMEOUT_S) -> MilvusOptions:
    """The indexer's options (requests may take long: a build), or a reader's with a shorter ``timeout_s``. An
    int: pymilvus bounds its retries by the timeout only when it is one (a float bounds each attempt, then it
    retries up to 75 times)."""
    return MilvusOptions(lite=settings.milvus_lite, prefix=settings.milvus_prefix, timeout_s=timeout_s)
