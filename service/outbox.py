"""Reading the ``changes`` log (the outbox of index writes) as batches of codes to upsert and ids to remove.

Two readers apply it: the API's :class:`service.follow.ChangeFollower` (its FAISS index) and the Milvus
:class:`service.indexer.Indexer`. An added image without a code of the model whose index is being written (it
was stored by a process still on the previous model while a model activation happened) is encoded from its
stored bytes by the reader's ``encode`` and the code row is written (:func:`encode_and_store`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from model.export import LoadedEncoder
from service.db import Database
from service.models import Change, Code, Image
from service.pipeline import encode_stored
from service.storage import BlobStore, BlobStoreError

log = logging.getLogger(__name__)

CHUNK = 10_000

# (image id, stored path) → the packed code of the image under the index's model, or None (bytes unreadable)
Encode = Callable[[int, str], bytes | None]


@dataclass(frozen=True)
class CodeBatch:
    """Codes to upsert, per domain: ``{domain: (ids int64 [m], codes uint8 [m, B])}``."""

    by_domain: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangeBatch:
    """The changes ``(after, last]`` of the log: ``added`` codes and ``deleted`` ids (int64), ``count`` rows."""

    last: int
    count: int
    added: CodeBatch
    deleted: np.ndarray


def read_changes(db: Database, version: str, after: int, encode: Encode, limit: int = CHUNK) -> ChangeBatch | None:
    """Up to ``limit`` changes after ``after`` with the added images' codes of ``version``; ``None``: none."""
    with db.session() as session:
        changes = _change_rows(session, after, limit)
        if not changes:
            return None
        added = [int(image_id) for _, image_id, op in changes if op == "add"]
        rows = session.execute(
            select(Image.id, Image.domain, Image.stored_path, Code.code)
            .outerjoin(Code, (Code.image_id == Image.id) & (Code.model_version == version))
            .where(Image.id.in_(added))
        ).all()
    deleted = np.array([int(image_id) for _, image_id, op in changes if op == "delete"], dtype=np.int64)
    return ChangeBatch(int(changes[-1][0]), len(changes), _codes(rows, encode), deleted)


def deleted_ids(db: Database, after: int, upto: int, limit: int = CHUNK) -> Iterator[np.ndarray]:
    """The ids of the images deleted by the changes ``(after, upto]``, ``limit`` changes a chunk (int64)."""
    while after < upto:
        with db.session() as session:
            rows = _change_rows(session, after, limit, upto)
        if not rows:
            return
        after = int(rows[-1][0])
        yield np.array([int(image_id) for _, image_id, op in rows if op == "delete"], dtype=np.int64)


def _change_rows(session: Session, after: int, limit: int, upto: int | None = None) -> Sequence[Row[int, int, str]]:
    """``(id, image_id, op)`` of up to ``limit`` changes after ``after`` (and up to ``upto``), in order."""
    query = select(Change.id, Change.image_id, Change.op).where(Change.id > after)
    if upto is not None:
        query = query.where(Change.id <= upto)
    return session.execute(query.order_by(Change.id).limit(limit)).all()


def missing_codes(db: Database, version: str, encode: Encode) -> CodeBatch:
    """The images without a code of ``version``, encoded (see the module docstring)."""
    with db.session() as session:
        missing = session.execute(
            select(Image.id, Image.domain, Image.stored_path, Code.code)
            .outerjoin(Code, (Code.image_id == Image.id) & (Code.model_version == version))
            .where(Code.image_id.is_(None))
        ).all()
    return _codes(missing, encode)


def _codes(rows: Iterable[tuple[int, str, str, bytes | None]], encode: Encode) -> CodeBatch:
    by_domain: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for image_id, domain, stored_path, code in rows:
        packed = bytes(code) if code is not None else encode(int(image_id), str(stored_path))
        if packed is not None:
            by_domain[str(domain)].append((int(image_id), packed))
    out = {}
    for domain, items in by_domain.items():
        ids = np.array([i for i, _ in items], dtype=np.int64)
        out[domain] = ids, np.frombuffer(b"".join(c for _, c in items), dtype=np.uint8).reshape(len(items), -1)
    return CodeBatch(out)


def encode_and_store(
    db: Database, store: BlobStore, encoder: LoadedEncoder, image_id: int, stored_path: str, max_pixels: int
) -> bytes | None:
    """Encode a stored image with ``encoder`` and store the code row (``None``: the bytes are unreadable)."""
    version = str(encoder.metadata["model_version"])
    try:
        encoded = encode_stored(store, encoder, [(image_id, stored_path)], max_pixels)
        problem: Exception | None = encoded.failed[0][1] if encoded.failed else None
    except BlobStoreError as exc:
        problem = exc
    if problem is not None:
        log.warning("image %d cannot be encoded with model %s: %s", image_id, version, problem)
        return None
    packed = encoded.codes[0].tobytes()
    with db.session() as session:
        try:
            session.add(Code(image_id=image_id, model_version=version, code=packed))
            session.commit()
        except IntegrityError:  # written meanwhile (by the activation job), or the image is gone
            session.rollback()
    return packed
