"""Adding and deleting images: blob, database row and code in one transaction, then the index.

Order of an ingest: probe (415/413) → already stored in this domain? (idempotent) → decode → encode → pack
→ touch the blob's entry, store the blob, commit image + code + change (:func:`service.blobs.commit_with_blobs`)
→ update the index (on the Milvus backend the caller waits for the indexer instead, outside the CPU slot:
:meth:`service.runtime.Runtime.wait_indexed`) → acknowledge. A crash after the commit leaves the index behind
the database, which the next start detects (the snapshot is stale) and repairs (on Milvus: the indexer applies
the change). A delete leaves the blob to the sweep (:mod:`service.blobs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import repository
from service.blobs import commit_with_blobs
from service.errors import NotFoundError
from service.models import Image
from service.pipeline import ImageInfo, encode_upload, probe
from service.runtime import Runtime
from service.serving import ServingPair
from service.storage import BlobNotFoundError, sha256_hex


@dataclass(frozen=True)
class NewImage:
    """The form fields of an upload (validated by the route)."""

    domain: str = "database"
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ingested:
    """``change``: the change the caller waits for the indexer to apply before acknowledging (the Milvus
    backend): the one that added the image or, for an image stored already, the latest change committed when it
    was found (its own among them: the row may be another process's, not indexed yet); ``None``: no wait."""

    image: Image
    created: bool
    change: int | None = None


def image_values(digest: str, info: ImageInfo, size: int, stored_path: str, new: NewImage) -> dict[str, Any]:
    """The column values of a new image's row (bytes already probed and stored): the one place they are listed
    (uploads, archive ingestion, the scale benchmark's bulk insert)."""
    return {
        "sha256": digest,
        "domain": new.domain,
        "label": new.label,
        "meta": new.metadata,
        "media_type": info.media_type,
        "size_bytes": size,
        "width": info.width,
        "height": info.height,
        "stored_path": stored_path,
    }


def image_row(digest: str, info: ImageInfo, size: int, stored_path: str, new: NewImage) -> Image:
    """The row of a new image (bytes already probed and stored)."""
    return Image(**image_values(digest, info, size, stored_path, new))


def _existing(runtime: Runtime, digest: str, domain: str) -> Ingested | None:
    """The stored image with these bytes in this domain, if any (see :attr:`Ingested.change`)."""
    with runtime.db.session() as session:
        if (image := repository.image_by_hash(session, digest, domain)) is None:
            return None
        change = repository.last_change(session) if runtime.settings.index_backend == "milvus" else None
    return Ingested(image, created=False, change=change)


def ingest(runtime: Runtime, pair: ServingPair, data: bytes, new: NewImage) -> Ingested:
    """Store an uploaded image; the same bytes in the same domain return the stored record unchanged."""
    max_pixels = runtime.settings.max_pixels
    info = probe(data, max_pixels)
    digest = sha256_hex(data)
    if (existing := _existing(runtime, digest, new.domain)) is not None:
        return existing
    code = encode_upload(pair.encoder, data, max_pixels)
    with runtime.write_lock:

        def write(session: Session, keys: list[str]) -> tuple[int, Image]:
            image = image_row(digest, info, len(data), keys[0], new)
            return repository.add_image(session, image, code.tobytes(), pair.model_version), image

        try:  # a blob stored for a row that fails to commit (the database is down) is left to the sweep
            change, image = commit_with_blobs(runtime.db, runtime.store, [data], runtime.settings.blob_grace_s, write)
        except IntegrityError:  # another process stored the same bytes in this domain meanwhile
            if (existing := _existing(runtime, digest, new.domain)) is not None:
                return existing
            raise
        runtime.index_added([image.id], code[None], image.domain, model_version=pair.model_version, change=change)
    return Ingested(image, created=True, change=change)


def get_image(runtime: Runtime, image_id: int) -> Image:
    with runtime.db.session() as session:
        image = repository.image_by_id(session, image_id)
    if image is None:
        raise NotFoundError(f"image {image_id} does not exist", code="image_not_found")
    return image


def open_content(runtime: Runtime, image: Image) -> BinaryIO:
    """A stream over an image's stored bytes (close it); 404 ``content_missing`` when the blob is gone."""
    try:
        return runtime.store.open(image.stored_path)
    except BlobNotFoundError:
        raise NotFoundError(f"the bytes of image {image.id} are missing from storage", code="content_missing") from None


def list_images(
    runtime: Runtime, *, domain: str | None, label: str | None, limit: int, after: int | None
) -> tuple[list[Image], int | None]:
    """A page of images in id order and the cursor of the next page (``None`` on the last page)."""
    with runtime.db.session() as session:
        rows = repository.list_images(session, domain=domain, label=label, limit=limit + 1, after=after)
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def list_domains(runtime: Runtime) -> list[tuple[str, int]]:
    """``(domain, image count)`` of every domain holding stored images, by name."""
    with runtime.db.session() as session:
        return repository.domain_counts(session)


def delete(runtime: Runtime, image_id: int) -> None:
    """Delete an image and its codes; its blob is left to the sweep (:mod:`service.blobs`), which removes it
    once no row references it, so that a worker storing the same bytes meanwhile never loses it."""
    with runtime.write_lock:
        with runtime.db.session() as session:
            image = repository.image_by_id(session, image_id)
            if image is None:
                raise NotFoundError(f"image {image_id} does not exist", code="image_not_found")
            change = repository.delete_image(session, image)
            session.commit()
        runtime.index_removed([image_id], change=change)
    runtime.wait_indexed(change)
