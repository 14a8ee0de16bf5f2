"""Image blobs shared by processes: no committed row ever points at a blob that was removed.

An API replica deleting an image and a worker ingesting the same bytes (in another domain, or again) can
interleave: the worker's store-if-absent finds the blob, the delete removes it, the worker commits a row
pointing at nothing. A lock inside one process cannot order them, so the database does, through the entries
of ``loose_blobs`` (:class:`~service.models.LooseBlob`):

* a delete never removes a blob: the transaction that deletes the row touches the blob's entry
  (:func:`service.repository.delete_image`);
* a writer touches the entries of its blobs (committed) *before* it stores them, then commits its rows in a
  transaction that takes the entries back (:func:`commit_with_blobs`);
* the sweep (:func:`sweep`, run by the workers every ``blob_sweep_s``) claims entries untouched for the grace
  period ``blob_grace_s``, and in the same transaction, holding their locks, removes the blobs that no row
  references. A writer's touch waits for that lock, so either the sweep saw the touch (and skips the blob) or
  the blob was gone before the writer stored it (and the writer stores it again). A writer slower than half
  the grace period between its touch and its commit starts again.

Blobs orphaned by a crash between storing and committing are swept the same way: their entries stay. Blobs
with no entry and no row (a delete before this module whose S3 request failed logged one) are found in the
store's listing by :func:`mark_strays` (``metah sweep-blobs --strays``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.orm import Session

from service import repository
from service.db import Database
from service.models import utc_now
from service.storage import BlobStore, blob_key, image_digest, sha256_hex

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 5
SWEEP_BATCH = 64  # blobs removed per transaction (on SQLite every writer waits for it)


class BlobLeaseError(RuntimeError):
    """A writer lost the race with the sweep ``ATTEMPTS`` times in a row (each attempt took longer than half
    the grace period between storing its blobs and committing its rows)."""


def lease(db: Database, digests: Sequence[str], grace_s: float) -> datetime:
    """Touch the entries of these blobs (committed) before storing them; returns the deadline before which
    the rows pointing at them must take the entries back (:func:`service.repository.take_blobs`)."""
    now = utc_now()
    with db.session() as session:
        repository.touch_blobs(session, digests, now)
        session.commit()
    return now + timedelta(seconds=grace_s / 2)


def commit_with_blobs(
    db: Database, store: BlobStore, blobs: Sequence[bytes], grace_s: float, write: Callable[[Session, list[str]], T]
) -> T:
    """Store ``blobs`` and commit what ``write(session, their keys)`` adds to the session (the rows pointing at
    them), such that no sweep can have removed one of the blobs when the rows become visible. Returns what
    ``write`` returns; its errors (an ``IntegrityError``) reach the caller, the transaction rolled back."""
    digests = [sha256_hex(data) for data in blobs]
    for _ in range(ATTEMPTS):
        deadline = lease(db, digests, grace_s)
        keys = [store.put(blobs[0])[0]] if len(blobs) == 1 else store.put_many(blobs)
        with db.session() as session:
            if lost := repository.take_blobs(session, digests, deadline):
                log.warning("%d blobs may have been swept while they were stored: storing them again", len(lost))
                session.rollback()
                continue
            result = write(session, keys)
            session.commit()
            return result
    raise BlobLeaseError(f"{len(blobs)} blobs: every attempt to store them took over half of {grace_s} s")


def mark_strays(db: Database, store: BlobStore, *, chunk: int = 1000) -> int:
    """Mark loose every image blob in the store that no row references and that has no entry (left behind
    by a delete whose request to S3 failed before the sweep existed, or copied in by hand), so that sweeps
    remove it once the grace period has passed; returns how many it found. Reads the store's whole listing."""
    marked = 0
    keys = store.image_keys()
    while listed := list(itertools.islice(keys, chunk)):
        digests = {digest for key in listed if (digest := image_digest(key)) is not None}
        with db.session() as session:
            strays = digests - repository.referenced_hashes(session, digests)
            repository.touch_blobs(session, strays, again=False)
            session.commit()
        marked += len(strays)
    return marked


def sweep(db: Database, store: BlobStore, grace_s: float, *, batch: int = SWEEP_BATCH) -> int:
    """Remove the image blobs whose entries nobody touched for ``grace_s`` seconds and that no row references;
    returns how many (a blob already gone, such as one whose upload failed, counts too). A batch is one
    transaction that holds its entries' locks while their blobs are removed; when removing fails
    (:class:`~service.storage.BlobStoreError`) the batch's entries stay for the next sweep."""
    before = utc_now() - timedelta(seconds=grace_s)
    removed = 0
    while True:
        with db.session() as session:
            claimed = repository.claim_loose_blobs(session, before, batch)
            unreferenced = sorted(set(claimed) - repository.referenced_hashes(session, claimed))
            for digest in unreferenced:
                store.delete(blob_key(digest))
            session.commit()
        removed += len(unreferenced)
        if len(claimed) < batch:
            return removed
