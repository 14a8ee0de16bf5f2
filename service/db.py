"""Engine and sessions. SQLite gets WAL, a busy timeout, enforced foreign keys and ``synchronous=FULL``.

Durability: with ``FULL`` in WAL mode every commit is synced to disk before it returns, so a row that was
acknowledged survives a power loss as its blob does (the blob store syncs file and folder before the row is
written). ``NORMAL`` would only survive a crash of the process: the last commits could be lost with the machine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_S = 30


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )  # no pre-ping: a file opened in this process has no server connection to lose
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    """One engine and its session factory (objects stay usable after commit: ``expire_on_commit=False``)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction the caller commits; rolled back on error, closed in any case."""
        with self._sessions() as session:
            try:
                yield session
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A DB-API cursor on a pooled connection (pinged, and rolled back when returned, as the pool does for
        every checkout), for a hot read that SQLAlchemy's ``Connection`` and result objects would slow down:
        the search path's hydrate query. Driver errors are raised as SQLAlchemy's (``OperationalError`` …), as
        through a ``Connection``, and a connection found dead is dropped from the pool."""
        dialect = self.engine.dialect
        driver_error = dialect.loaded_dbapi.Error
        connection = None
        try:
            connection = self.engine.raw_connection()
            cursor = connection.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
        except driver_error as exc:
            lost = connection is not None and dialect.is_disconnect(exc, connection.dbapi_connection, None)
            if lost and connection is not None:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                None, None, exc, driver_error, connection_invalidated=lost, dialect=dialect
            ) from exc
        finally:
            if connection is not None:
                connection.close()

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()


def is_transient(exc: BaseException) -> bool:
    """A database error that may pass by itself: the server restarting or failing over, a dropped connection,
    a busy SQLite file. A wrong statement or a violated constraint is not."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_transient(
    call: Callable[[], T],
    *,
    what: str,
    give_up_after: float,
    first_wait: float = 0.1,
    max_wait: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, called again after a transient database error (:func:`is_transient`) with exponential backoff
    (``first_wait`` doubling up to ``max_wait``) until ``give_up_after`` seconds have passed; then, and on any
    other error, the error is raised. Each retry is logged at WARNING with ``what`` was being done."""
    deadline = time.monotonic() + give_up_after
    wait, attempt = first_wait, 1
    while True:
        try:
            return call()
        except DBAPIError as exc:
            if not is_transient(exc) or time.monotonic() + wait > deadline:
                raise
            log.warning(
                "%s: transient database error (attempt %d, again in %.1f s): %s", what, attempt, wait, exc.orig or exc
            )
        sleep(wait)
        wait, attempt = min(wait * 2, max_wait), attempt + 1
