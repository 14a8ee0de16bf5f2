"""Electing the one indexer among processes that share a database: a lock the operating system or the database
releases when its holder dies.

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection of its own, held while
  the process leads. When the process dies (or its connection is cut), the server releases it and the next
  candidate's try succeeds. :meth:`Leadership.held` asks the server whether this connection still holds it.
* SQLite: an exclusive ``flock`` on ``<database file>.indexer.lock`` beside the database (the processes that
  share a SQLite file share a machine); the kernel releases it when the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from service.db import Database

log = logging.getLogger(__name__)

INDEXER_LOCK_KEY = 0x6D65746168_01  # "metah" + 1 (``repository.CHANGES_LOCK_KEY`` is "metah")


class Leadership:
    """Try to become, check and stop being the one holder of the indexer lock of ``db``'s database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._postgres = db.engine.dialect.name == "postgresql"
        self._connection: Connection | None = None
        self._file: IO[bytes] | None = None

    @property
    def leading(self) -> bool:
        return self._connection is not None or self._file is not None

    def try_acquire(self) -> bool:
        """Become the leader if nobody is (never blocks); ``True`` when this process leads now."""
        if self.leading:
            return True
        if self._postgres:
            connection = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                got = bool(connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": INDEXER_LOCK_KEY}))
            except DBAPIError:
                connection.close()
                raise
            if not got:
                connection.close()
                return False
            self._connection = connection
        else:
            handle = _lock_path(self.db).open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            self._file = handle
        log.info("this process (pid %d) leads the indexer", os.getpid())
        return True

    def held(self) -> bool:
        """Whether this process still leads (on PostgreSQL: its lock connection still holds the lock)."""
        if self._connection is None:
            return self._file is not None
        query = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() "
            "AND ((classid::bigint << 32) | objid::bigint) = :key"
        )
        try:
            return bool(self._connection.scalar(query, {"key": INDEXER_LOCK_KEY}))
        except DBAPIError:
            log.warning("the indexer lock's connection is gone: no longer leading", exc_info=True)
            self.release()
            return False

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(DBAPIError):
                self._connection.close()  # the server releases a session lock with its session
            self._connection = None
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None


def _lock_path(db: Database) -> Path:
    database = make_url(str(db.engine.url)).database
    if not database or database == ":memory:":
        raise ValueError("the indexer election needs a SQLite file or PostgreSQL")
    return Path(f"{database}.indexer.lock")
