"""The Milvus indexer's cursors (``index_cursors``): what each model version's collection holds, and waiting for it.

One row per model version whose collection the indexer builds or keeps (:class:`service.models.IndexCursor`).
The indexer (:mod:`service.indexer`) is the only writer of ``change`` and ``write_ts``; the activation job asks
for a collection (:func:`request`) and retires the previous model's (:func:`retire_others`); API replicas and
workers read them: :func:`active_cursor` before a search (its Milvus timestamp), :func:`wait_indexed` after a
write (read-your-writes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, literal, select, update
from sqlalchemy.orm import Session

from service.db import Database
from service.models import IndexCursor, ModelVersion, UTCDateTime, utc_now

REQUESTED, READY, RETIRED = "requested", "ready", "retired"
# The API's 503 codes until it serves from Milvus: the active model's collection is not built yet; Milvus does
# not answer (both pass: the API keeps trying, and its job workers, which build the collection, run meanwhile).
INDEX_NOT_READY, INDEX_UNAVAILABLE = "index_not_ready", "index_unavailable"
WAIT_POLL_S = 0.01  # how often a waiting write looks at the cursor again


@dataclass(frozen=True)
class Cursor:
    """A collection's place in the ``changes`` log: every change up to ``change`` is in it, and a search that
    waits for Milvus timestamp ``write_ts`` sees them (0: nothing to wait for, as on Milvus Lite). A
    ``requested`` row's ``change`` is where its build started (0 until one starts)."""

    model_version: str
    state: str
    change: int
    write_ts: int
    updated_at: datetime | None = None  # the indexer's last write of the row (a build touches it as it goes)


def _cursor(row: IndexCursor) -> Cursor:
    return Cursor(row.model_version, row.state, int(row.change), int(row.write_ts), row.updated_at)


def all_cursors(session: Session) -> dict[str, Cursor]:
    return {row.model_version: _cursor(row) for row in session.scalars(select(IndexCursor))}


def cursor_of(session: Session, version: str) -> Cursor | None:
    row = session.get(IndexCursor, version)
    return None if row is None else _cursor(row)


def active_cursor(session: Session) -> Cursor | None:
    """The cursor of the active model's collection (``None``: no active model, or no collection asked yet)."""
    query = select(IndexCursor).join(ModelVersion, ModelVersion.version == IndexCursor.model_version)
    row = session.scalars(query.where(ModelVersion.active.is_(True))).one_or_none()
    return None if row is None else _cursor(row)


def request(session: Session, version: str) -> None:
    """Ask the indexer to (re)build ``version``'s collection from the ``codes`` table (the caller commits)."""
    row = session.get(IndexCursor, version)
    if row is None:
        session.add(IndexCursor(model_version=version, state=REQUESTED, change=0, write_ts=0))
    else:
        row.state, row.change, row.write_ts = REQUESTED, 0, 0
    session.flush()


def request_active(session: Session) -> bool:
    """Ask for the active model's collection when it has none or a retired one, in one statement that checks it
    is still active (an activation committed meanwhile retires it for good); ``True`` when asked."""
    active = select(ModelVersion.version).where(ModelVersion.active.is_(True))
    revived = session.execute(
        update(IndexCursor)
        .where(IndexCursor.model_version.in_(active), IndexCursor.state == RETIRED)
        .values(state=REQUESTED, change=0, write_ts=0, updated_at=utc_now())
    )
    missing = active.where(
        ~select(IndexCursor.model_version).where(IndexCursor.model_version == ModelVersion.version).exists()
    )
    columns = [
        IndexCursor.model_version,
        IndexCursor.state,
        IndexCursor.change,
        IndexCursor.write_ts,
        IndexCursor.updated_at,
    ]
    added = session.execute(
        insert(IndexCursor).from_select(
            [c.key for c in columns],
            missing.add_columns(literal(REQUESTED), literal(0), literal(0), literal(utc_now(), UTCDateTime())),
        )
    )
    return bool(revived.rowcount or added.rowcount)  # type: ignore[attr-defined]


def touch(session: Session, version: str) -> None:
    """The indexer is still building ``version``'s collection (what an activation waiting for it watches)."""
    session.execute(update(IndexCursor).where(IndexCursor.model_version == version).values(updated_at=utc_now()))


def building(session: Session, version: str, change: int) -> None:
    """The indexer starts building ``version``'s collection from the codes as of ``change`` (kept in the
    ``requested`` row's ``change``: what a leader taking over from this one heals from; the caller commits)."""
    session.execute(
        update(IndexCursor)
        .where(IndexCursor.model_version == version, IndexCursor.state == REQUESTED)
        .values(change=change, updated_at=utc_now())
    )


def retire_unless_active(session: Session, version: str) -> None:
    """Stop keeping ``version``'s collection up to date unless it is the active model's (an activation that was
    cancelled, or that another worker will run again and ask for anew)."""
    active = select(ModelVersion.version).where(ModelVersion.active.is_(True))
    session.execute(
        update(IndexCursor)
        .where(IndexCursor.model_version == version, IndexCursor.model_version.not_in(active))
        .values(state=RETIRED, updated_at=utc_now())
    )


def forget_retired(session: Session, version: str) -> None:
    """Delete ``version``'s row if it is still retired (its collection was dropped; the caller commits)."""
    session.execute(delete(IndexCursor).where(IndexCursor.model_version == version, IndexCursor.state == RETIRED))


def retire_others(session: Session, keep: str) -> None:
    """Stop keeping every collection but ``keep``'s up to date (the caller commits, with the activation)."""
    session.execute(
        update(IndexCursor)
        .where(IndexCursor.model_version != keep, IndexCursor.state != RETIRED)
        .values(state=RETIRED, updated_at=utc_now())
    )


def mark(session: Session, version: str, *, expect: str, change: int, write_ts: int) -> int:
    """Record that ``version``'s collection is ``ready`` at ``change``, if its row is still in state ``expect``
    (a row retired or asked again meanwhile keeps its state: the write was a stale round's); returns the rows
    updated (0 or 1)."""
    result = session.execute(
        update(IndexCursor)
        .where(IndexCursor.model_version == version, IndexCursor.state == expect)
        .values(state=READY, change=change, write_ts=write_ts, updated_at=utc_now())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]  # a CursorResult


def wait_indexed(db: Database, change: int, timeout_s: float) -> bool:
    """Wait until the active model's collection holds every change up to ``change``; ``False`` when
    ``timeout_s`` passed first (the write is committed all the same: the indexer applies it later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with db.session() as session:
            cursor = active_cursor(session)
        if cursor is not None and cursor.state == READY and cursor.change >= change:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(WAIT_POLL_S)
