"""The API's index follows the database: writes of other processes (job workers) arrive via ``changes``.

Every write that changes what the index holds appends to the ``changes`` log in the same transaction as the
rows. :class:`ChangeFollower` keeps a cursor (the last change applied) and, on :meth:`catch_up`, reads the
changes after it, upserts the added images' codes of the serving model and removes the deleted ids. It runs
from a background task (so the index and its snapshot stay current while nobody searches) and from a search
that finds the log ahead of the cursor: a search reads the cursor without the lock and the log's last change
in its hydrate query, so it takes the lock only when there is something to apply (read-your-writes for a
client that saw its job succeed; see :func:`service.retrieval.nearest_rows`). Applying a change twice is
harmless (upsert/remove are idempotent), so the API's own writes, which update the index directly, may be seen
again here; when the API's own write is the next change after the cursor, :meth:`ChangeFollower.advance` moves
the cursor past it, so the next search does not catch up (and search twice) for a change the index holds.

An added image without a code of the serving model (written by a process still on the previous model while
a model activation happened) is encoded here from its stored bytes, and the code row is written.

The background task also notices a model activation (another active row in ``model_versions``): it loads the
new model, builds its index from the ``codes`` table and swaps the serving pair; the swap's catch-up applies
the changes after the new index's ``last_change`` with the new model, so no write is lost.

The cursor relies on changes becoming visible in id order. SQLite's single writer guarantees that; on
PostgreSQL every writer takes a transaction-scoped advisory lock before it draws a change id and holds it until
commit (``repository.CHANGES_LOCK_KEY``), so commits follow id order there too.
"""

from __future__ import annotations

import logging
import threading

from service import outbox, repository
from service.db import Database
from service.outbox import ChangeBatch, CodeBatch
from service.registry import load_registered, open_index
from service.serving import ActivePair, ServingPair
from service.settings import Settings
from service.storage import BlobStore

log = logging.getLogger(__name__)


class ChangeFollower:
    """Applies the ``changes`` after :attr:`cursor` to the serving index, and follows model activations."""

    def __init__(self, settings: Settings, db: Database, store: BlobStore, active: ActivePair) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.active = active
        self.cursor = active.current.index.last_change
        self._lock = threading.Lock()

    def catch_up(self) -> int:
        """Apply the new changes; returns how many were read."""
        with self._lock:
            with self.db.session() as session:
                if repository.last_change(session) <= self.cursor:
                    return 0
            return self._apply_all(self.active.current)

    def advance(self, change: int) -> None:
        """The API applied its own write ``change`` to the serving index: when it is the next change after the
        cursor, the index holds every change up to it (waits for a catch-up that is running)."""
        with self._lock:
            if change == self.cursor + 1:
                self.cursor = change

    def follow_activation(self) -> bool:
        """Swap in the model the database marks active, when it is not the serving one; ``True`` if swapped."""
        with self.db.session() as session:
            row = repository.active_model(session)
        if row is None or row.version == self.active.current.model_version:
            return False
        with self._lock:
            encoder = load_registered(self.store, row)
            new = ServingPair(encoder, open_index(self.settings, self.db, row.version, row.bits))
            self.cursor = new.index.last_change

            def catch_up(pair: ServingPair) -> None:
                self._apply_all(pair, direct=True)
                self._upsert(pair, outbox.missing_codes(self.db, pair.model_version, self._encoder(pair)), None, True)

            self.active.swap(new, catch_up=catch_up)
        return True

    def _apply_all(self, pair: ServingPair, *, direct: bool = False) -> int:
        applied = 0
        while (batch := outbox.read_changes(self.db, pair.model_version, self.cursor, self._encoder(pair))) is not None:
            self._apply(pair, batch, direct)
            applied += batch.count
        return applied

    def _apply(self, pair: ServingPair, batch: ChangeBatch, direct: bool) -> None:
        self._upsert(pair, batch.added, batch.last, direct)
        if direct:  # inside a swap: the new pair's index, not yet serving
            pair.index.remove(batch.deleted, change=batch.last)
        else:
            self.active.remove(batch.deleted, change=batch.last)
        self.cursor = batch.last

    def _upsert(self, pair: ServingPair, codes: CodeBatch, change: int | None, direct: bool) -> None:
        for domain, (ids, packed) in codes.by_domain.items():
            if direct:
                pair.index.upsert(ids, packed, domain, change=change)
            else:
                assert change is not None
                self.active.add(ids, packed, domain, model_version=pair.model_version, change=change)

    def _encoder(self, pair: ServingPair) -> outbox.Encode:
        def encode(image_id: int, stored_path: str) -> bytes | None:
            return outbox.encode_and_store(
                self.db, self.store, pair.encoder, image_id, stored_path, self.settings.max_pixels
            )

        return encode
