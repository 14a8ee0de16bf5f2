"""The embedded SQLite database's connection settings (what a commit promises) and the raw cursor of the
search path."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from service.db import Database

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def test_sqlite_commits_are_synced_in_wal_mode(tmp_path: Path) -> None:
    """WAL with ``synchronous=FULL``: a commit is on disk when it returns (``NORMAL`` may lose the last
    commits on a power loss, while the blobs they name were synced)."""
    db = Database(f"sqlite:///{tmp_path / 'metah.db'}")
    try:
        with db.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA synchronous")).scalar() == FULL
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        db.close()


def test_a_raw_cursor_reads_and_raises_sqlalchemy_errors(tmp_path: Path) -> None:
    """``Database.cursor``: the driver's cursor on a pooled connection, handed back to the pool after a read and
    after a failed statement; the driver's error arrives as SQLAlchemy's, which the API maps to its errors."""
    db = Database(f"sqlite:///{tmp_path / 'metah.db'}")
    try:
        with db.cursor() as cursor:
            cursor.execute("SELECT ? + 1", (41,))
            assert cursor.fetchall() == [(42,)]
        with pytest.raises(OperationalError, match="no such table"), db.cursor() as cursor:
            cursor.execute("SELECT * FROM missing")
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        db.close()
