"""Queries on the tables of :mod:`service.models`. Plain functions taking a ``Session``; no HTTP here.

The caller owns the transaction (commit or roll back); these functions only ``flush`` where ids are needed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from service.models import Change, Code, Image, Job, LooseBlob, ModelVersion, utc_now

ROW_CHUNK = 10_000


# ------------------------------------------------------------------------------------------------ images


def image_by_id(session: Session, image_id: int) -> Image | None:
    return session.get(Image, image_id)


def image_by_hash(session: Session, sha256: str, domain: str) -> Image | None:
    return session.scalars(select(Image).where(Image.sha256 == sha256, Image.domain == domain)).one_or_none()


def stored_keys(session: Session, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which ``(sha256, domain)`` pairs are stored already (one query for a whole batch)."""
    if not keys:
        return set()
    query = select(Image.sha256, Image.domain).where(Image.sha256.in_(sorted({sha for sha, _ in keys})))
    wanted = set(keys)
    return {(str(sha), str(domain)) for sha, domain in session.execute(query) if (sha, domain) in wanted}


def images_by_ids(session: Session, ids: Sequence[int]) -> dict[int, Image]:
    if not ids:
        return {}
    return {image.id: image for image in session.scalars(select(Image).where(Image.id.in_(list(ids))))}


def list_images(
    session: Session, *, domain: str | None, label: str | None, limit: int, after: int | None
) -> list[Image]:
    """Images in ascending id order after id ``after`` (keyset pagination), at most ``limit``."""
    query = select(Image).order_by(Image.id).limit(limit)
    if domain is not None:
        query = query.where(Image.domain == domain)
    if label is not None:
        query = query.where(Image.label == label)
    if after is not None:
        query = query.where(Image.id > after)
    return list(session.scalars(query))


def domain_counts(session: Session) -> list[tuple[str, int]]:
    """``(domain, number of stored images)`` of every domain holding an image, by domain name."""
    query = select(Image.domain, func.count()).group_by(Image.domain).order_by(Image.domain)
    return [(str(domain), int(count)) for domain, count in session.execute(query)]


def add_image(session: Session, image: Image, code: bytes, model_version: str) -> int:
    """Insert an image with its code and log the change; returns the change id (``image.id`` is set)."""
    session.add(image)
    session.flush()
    session.add(Code(image_id=image.id, model_version=model_version, code=code))
    return log_change(session, image.id, "add")


def add_images(session: Session, images: Sequence[Image], codes: Sequence[bytes], model_version: str) -> int:
    """:func:`add_image` for a batch of new (transient) rows, as three multi-row INSERTs without the ORM's
    per-object bookkeeping; returns the last change id."""
    columns = [attr.key for attr in Image.__mapper__.column_attrs if attr.key not in ("id", "created_at")]
    values = [{key: getattr(image, key) for key in columns} for image in images]
    ids = list(session.scalars(insert(Image).returning(Image.id, sort_by_parameter_order=True), values))
    session.execute(
        insert(Code),
        [{"image_id": i, "model_version": model_version, "code": code} for i, code in zip(ids, codes, strict=True)],
    )
    _lock_changes(session)
    changes = session.scalars(insert(Change).returning(Change.id), [{"image_id": i, "op": "add"} for i in ids])
    return max(changes)


def delete_image(session: Session, image: Image) -> int:
    """Delete an image (its codes go with it), mark its blob loose (the sweep removes it once no row references
    it) and log the change; returns the change id."""
    # The entry first: a writer locks it before it inserts a row (whose unique key may wait on this row) and
    # before the changes lock, so on PostgreSQL the two lock in the same order and cannot deadlock.
    touch_blobs(session, [image.sha256])
    session.execute(delete(Code).where(Code.image_id == image.id))
    session.delete(image)
    return log_change(session, image.id, "delete")


# ------------------------------------------------------------------------------------------- loose blobs


def touch_blobs(session: Session, digests: Collection[str], now: datetime | None = None, *, again: bool = True) -> None:
    """Mark image blobs loose as of ``now`` (:class:`~service.models.LooseBlob`); an existing entry is touched
    again, or with ``again=False`` kept as it is. Entries are locked in hash order, as every writer locks them."""
    rows = [{"sha256": digest, "touched_at": now or utc_now()} for digest in sorted(set(digests))]
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(LooseBlob).values(rows)
    if again:
        touched = {"touched_at": statement.excluded.touched_at}
        session.execute(statement.on_conflict_do_update(index_elements=["sha256"], set_=touched))
    else:
        session.execute(statement.on_conflict_do_nothing(index_elements=["sha256"]))


def take_blobs(session: Session, digests: Collection[str], deadline: datetime) -> set[str]:
    """In the transaction that commits new rows pointing at these blobs, before it inserts them: delete their
    entries (locked until the commit). The writer touched them before it stored the blobs; a sweep claims only
    entries untouched for the grace period, so when this runs before ``deadline`` (touch time + half the grace
    period, the other half for clocks that disagree) no sweep can have removed a blob since. After it, only a
    blob some committed row references (locked against deletion until the commit) is sure to be there.
    Returns the hashes that are neither: the caller rolls back and stores them again."""
    wanted = sorted(set(digests))
    if not wanted:
        return set()
    session.execute(delete(LooseBlob).where(LooseBlob.sha256.in_(wanted)))
    if utc_now() < deadline:
        return set()
    held = select(Image.sha256).where(Image.sha256.in_(wanted)).order_by(Image.id).with_for_update(read=True)
    return set(wanted) - set(session.scalars(held))


def claim_loose_blobs(session: Session, before: datetime, limit: int) -> list[str]:
    """Delete (in the caller's transaction, which holds their locks until it ends) up to ``limit`` entries last
    touched before ``before``, skipping entries other transactions hold; returns their hashes."""
    oldest = select(LooseBlob.sha256).where(LooseBlob.touched_at < before).order_by(LooseBlob.sha256).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        oldest = oldest.with_for_update(skip_locked=True)
    claimed = delete(LooseBlob).where(LooseBlob.sha256.in_(oldest)).returning(LooseBlob.sha256)
    return list(session.scalars(claimed))


def referenced_hashes(session: Session, digests: Collection[str]) -> set[str]:
    """Which of these hashes some image row holds (read afresh: on PostgreSQL each statement sees what was
    committed before it began)."""
    if not digests:
        return set()
    query = select(Image.sha256).where(Image.sha256.in_(sorted(set(digests)))).distinct()
    return {str(digest) for digest in session.scalars(query)}


# ------------------------------------------------------------------------------------------------- codes


def stored_code(session: Session, image_id: int, model_version: str) -> bytes | None:
    """The packed code the database holds for an image under ``model_version`` (``None``: there is none)."""
    return session.scalar(select(Code.code).where(Code.image_id == image_id, Code.model_version == model_version))


def iter_codes(session: Session, model_version: str) -> Iterator[tuple[int, bytes, str]]:
    """``(image id, packed code, domain)`` of every image encoded by ``model_version``, streamed."""
    query = (
        select(Code.image_id, Code.code, Image.domain)
        .join(Image, Image.id == Code.image_id)
        .where(Code.model_version == model_version)
        .order_by(Code.image_id)
        .execution_options(yield_per=ROW_CHUNK)
    )
    for image_id, code, domain in session.execute(query):
        yield int(image_id), bytes(code), str(domain)


def max_coded_image(session: Session) -> int:
    """The largest image id that has a code of any model (0 when none)."""
    return int(session.scalar(select(func.max(Code.image_id))) or 0)


def delete_codes_except(session: Session, keep: Sequence[str], first: int, last: int) -> int:
    """Delete the codes of image ids ``first..last`` of every model version not in ``keep``; returns how many
    (a range of the primary key, so each call reads only that range)."""
    query = delete(Code).where(Code.image_id >= first, Code.image_id <= last, Code.model_version.not_in(list(keep)))
    return int(session.execute(query).rowcount or 0)  # type: ignore[attr-defined]  # a CursorResult


# ----------------------------------------------------------------------------------------------- changes


# Followers read the ``changes`` log by id (``WHERE id > cursor``), so ids must become visible in order. SQLite
# has one writer at a time, so they do. PostgreSQL hands out sequence values at insert time: a transaction that
# took id 11 could commit after another one's id 12, and a follower already past 12 would never see 11. A
# transaction-scoped advisory lock, taken before the id and held until commit, keeps commits in id order
# (writes are short batches; reads never take it).
CHANGES_LOCK_KEY = 0x6D65746168  # "metah"


def _lock_changes(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHANGES_LOCK_KEY})


def log_change(session: Session, image_id: int, op: str) -> int:
    """Append to the changes log (in the caller's transaction; see ``CHANGES_LOCK_KEY``)."""
    _lock_changes(session)
    change = Change(image_id=image_id, op=op)
    session.add(change)
    session.flush()
    return change.id


def last_change(session: Session) -> int:
    """The id of the latest change (0 when none): what an index snapshot must reflect to be current."""
    return int(session.scalar(select(func.max(Change.id))) or 0)


# ------------------------------------------------------------------------------------------------ models


def active_model(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).one_or_none()


def model_by_version(session: Session, version: str) -> ModelVersion | None:
    return session.get(ModelVersion, version)


def list_models(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.version)))


def add_model(
    session: Session,
    *,
    version: str,
    artefact_path: str,
    bits: int,
    metrics: dict[str, Any],
    meta: dict[str, Any],
    created_at: datetime | None = None,
) -> ModelVersion:
    model = ModelVersion(
        version=version, artefact_path=artefact_path, bits=bits, metrics=metrics, meta=meta, active=False
    )
    if created_at is not None:
        model.created_at = created_at
    session.add(model)
    session.flush()
    return model


def activate_model(session: Session, version: str) -> None:
    """Mark ``version`` as the only active model (the caller commits)."""
    session.execute(update(ModelVersion).where(ModelVersion.active.is_(True)).values(active=False))
    session.flush()
    session.execute(update(ModelVersion).where(ModelVersion.version == version).values(active=True))


# -------------------------------------------------------------------------------------------------- jobs


def list_jobs(session: Session, *, kind: str | None, status: str | None, limit: int) -> list[Job]:
    """The newest ``limit`` jobs (descending id), optionally of one kind and in one status."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if status is not None:
        query = query.where(Job.status == status)
    return list(session.scalars(query))
