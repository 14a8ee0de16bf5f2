"""The API's index follows the database: writes of other processes (job workers) arrive via ``changes``.

Every write that changes what the index holds appends to the ``changes`` log in the same transaction as the
rows. :class:`ChangeFollower` keeps a cursor (the last change applied) and, on :meth:`catch_up`, reads the
changes after it, upserts the added images' codes of the serving model and removes the deleted ids. It runs
from a background task (so the index and its snapshot stay current while nobody searches) and from a search
that finds the log ahead of the cursor: a search reads the cursor without the lock and the log's last change
in its hydrate query, so it takes the lock only when there is something to apply (read-your-writes for a
client that saw its job succeed; see :func:`service.retrieval.nearest_rows`). Applying a change twice is
harmless (upsert/remove are idempotent), so the API's own writes, which update the index directly, may be seen
again here.

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
from collections import defaultdict

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from service import repository
from service.db import Database
from service.models import Change, Code, Image
from service.pipeline import encode_stored
from service.registry import load_registered, open_index
from service.serving import ActivePair, ServingPair
from service.settings import Settings
from service.storage import BlobStore, BlobStoreError

log = logging.getLogger(__name__)

CHUNK = 10_000


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
                self._fill_missing(pair)

            self.active.swap(new, catch_up=catch_up)
        return True

    def _apply_all(self, pair: ServingPair, *, direct: bool = False) -> int:
        applied = 0
        while (n := self._apply_chunk(pair, direct)) > 0:
            applied += n
        return applied

    def _apply_chunk(self, pair: ServingPair, direct: bool) -> int:
        with self.db.session() as session:
            query = select(Change.id, Change.image_id, Change.op).where(Change.id > self.cursor)
            changes = session.execute(query.order_by(Change.id).limit(CHUNK)).all()
            if not changes:
                return 0
            added = [int(image_id) for _, image_id, op in changes if op == "add"]
            rows = session.execute(
                select(Image.id, Image.domain, Image.stored_path, Code.code)
                .outerjoin(Code, (Code.image_id == Image.id) & (Code.model_version == pair.model_version))
                .where(Image.id.in_(added))
            ).all()
        last = int(changes[-1][0])
        by_domain: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        for image_id, domain, stored_path, code in rows:
            packed = bytes(code) if code is not None else self._encode(pair, int(image_id), str(stored_path))
            if packed is not None:
                by_domain[str(domain)].append((int(image_id), packed))
        for domain, items in by_domain.items():
            ids = np.array([i for i, _ in items], dtype=np.int64)
            codes = np.frombuffer(b"".join(c for _, c in items), dtype=np.uint8).reshape(len(items), -1)
            if direct:  # inside a swap: the new pair's index, not yet serving
                pair.index.upsert(ids, codes, domain, change=last)
            else:
                self.active.add(ids, codes, domain, model_version=pair.model_version, change=last)
        deleted = np.array([int(image_id) for _, image_id, op in changes if op == "delete"], dtype=np.int64)
        if direct:
            pair.index.remove(deleted, change=last)
        else:
            self.active.remove(deleted, change=last)
        self.cursor = last
        return len(changes)

    def _fill_missing(self, pair: ServingPair) -> None:
        """Encode and index the images that have no code of ``pair``'s model (stored by a process still on the
        previous model around the activation)."""
        with self.db.session() as session:
            missing = session.execute(
                select(Image.id, Image.domain, Image.stored_path)
                .outerjoin(Code, (Code.image_id == Image.id) & (Code.model_version == pair.model_version))
                .where(Code.image_id.is_(None))
            ).all()
        for image_id, domain, stored_path in missing:
            if (packed := self._encode(pair, int(image_id), str(stored_path))) is not None:
                code = np.frombuffer(packed, dtype=np.uint8)[None]
                pair.index.upsert(np.array([image_id], dtype=np.int64), code, str(domain))

    def _encode(self, pair: ServingPair, image_id: int, stored_path: str) -> bytes | None:
        """Encode a stored image with the serving model and store the code (``None``: bytes unreadable)."""
        try:
            encoded = encode_stored(self.store, pair.encoder, [(image_id, stored_path)], self.settings.max_pixels)
            problem: Exception | None = encoded.failed[0][1] if encoded.failed else None
        except BlobStoreError as exc:
            problem = exc
        if problem is not None:
            log.warning("image %d cannot be encoded with model %s: %s", image_id, pair.model_version, problem)
            return None
        packed = encoded.codes[0].tobytes()
        with self.db.session() as session:
            try:
                session.add(Code(image_id=image_id, model_version=pair.model_version, code=packed))
                session.commit()
            except IntegrityError:  # written meanwhile (by the activation job), or the image is gone
                session.rollback()
        return packed
