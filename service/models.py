"""SQLAlchemy tables (the database is the source of truth; the FAISS index is a cache of ``codes``).

These are tables, not API schemas: the service's response models live in ``service/schemas.py``.

Conventions:

* ids are stable 64-bit integers, never reused (SQLite ``AUTOINCREMENT``, PostgreSQL identity), because the
  index and clients keep them;
* ``codes.code`` holds one packed code (``bits // 8`` bytes, most-significant bit first, see ``index.codes``);
* every write that changes what the index must hold appends a row to ``changes``; ``max(changes.id)`` is the
  database "change" that index snapshots are compared with (``index.load_or_rebuild``);
* timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL; INTEGER on SQLite, where only "INTEGER PRIMARY KEY" is the auto-incrementing rowid.
Id = BigInteger().with_variant(Integer(), "sqlite")

DOMAIN_LENGTH = 64
LABEL_LENGTH = 256
VERSION_LENGTH = 128


def utc_now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the zone; it is put back on load)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class ModelVersion(Base):
    """An encoder artefact the service can serve; at most one row is active.

    ``meta`` is the artefact's own metadata (method, backbone, input size, classes) without its metrics.
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        Index(
            "uq_model_versions_active",
            "active",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    version: Mapped[str] = mapped_column(String(VERSION_LENGTH), primary_key=True)
    artefact_path: Mapped[str] = mapped_column(String(1024))
    bits: Mapped[int]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Image(Base):
    """One stored image in one domain. The same bytes may be stored once per domain."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("sha256", "domain"),
        Index(None, "domain", "id"),
        Index(None, "label", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64))
    domain: Mapped[str] = mapped_column(String(DOMAIN_LENGTH))
    label: Mapped[str | None] = mapped_column(String(LABEL_LENGTH))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    media_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int]
    height: Mapped[int]
    stored_path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Code(Base):
    """The packed code of one image under one model version."""

    __tablename__ = "codes"

    image_id: Mapped[int] = mapped_column(Id, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    model_version: Mapped[str] = mapped_column(
        String(VERSION_LENGTH), ForeignKey("model_versions.version", ondelete="CASCADE"), primary_key=True
    )
    code: Mapped[bytes] = mapped_column(LargeBinary)


class Change(Base):
    """An append-only log of writes the index must follow (``op``: ``add`` or ``delete``)."""

    __tablename__ = "changes"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(BigInteger)
    op: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


ACTIVATION_INDEX = "uq_jobs_one_activation"
ONE_ACTIVATION_WHERE = "kind = 'activate' AND status IN ('queued', 'running')"


class Job(Base):
    """A background job (ingest archive, training, model activation), claimed by a worker."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "status", "id"),
        # At most one activation queued or running, enforced by the database so concurrent requests (any
        # number of API replicas) cannot both queue one: the loser gets 409.
        Index(
            ACTIVATION_INDEX,
            "kind",
            unique=True,
            sqlite_where=text(ONE_ACTIVATION_WHERE),
            postgresql_where=text(ONE_ACTIVATION_WHERE),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress_done: Mapped[int] = mapped_column(BigInteger, default=0)
    progress_total: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[list[Any]] = mapped_column(default=list)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))


class LooseBlob(Base):
    """An image blob that may have no row: a writer is about to point a new row at it, or its last row was
    deleted. ``touched_at`` is the latest such moment. The blob sweep (:mod:`service.blobs`) removes a blob whose
    entry is older than the grace period and which no row references, holding the entry's lock while it does;
    a writer touches the entry before it stores the blob and takes it back in the transaction of its row."""

    __tablename__ = "loose_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    touched_at: Mapped[datetime] = mapped_column(index=True)


class IndexCursor(Base):
    """Where the indexer (:mod:`service.indexer`) stands with one model version's Milvus collection.

    ``state``: ``requested`` (to be built from the ``codes`` table), ``ready`` (built; the indexer applies every
    change after ``change`` to it) or ``retired`` (no longer kept up to date: a previous model). ``change`` is
    the last change of the log the collection holds; ``write_ts`` the Milvus timestamp of the indexer's last
    write to it, which readers pass as ``guarantee_timestamp`` to see everything up to ``change``.
    """

    __tablename__ = "index_cursors"

    model_version: Mapped[str] = mapped_column(String(VERSION_LENGTH), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    change: Mapped[int] = mapped_column(BigInteger, default=0)
    write_ts: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)
