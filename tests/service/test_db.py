"""The embedded SQLite database's connection settings: what a commit promises."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

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
