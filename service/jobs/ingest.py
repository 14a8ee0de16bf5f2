"""Bulk ingestion: an uploaded archive is stored (content-addressed) and queued; a worker ingests it.

Submission (:func:`submit`, in the API process): stream the upload to ``data_dir/archives`` while hashing it,
check from its content that it is a zip or tar (else 415), store it in the blob store (``archives/<sha256>``:
there already on the local store, uploaded to S3 otherwise), queue an ``ingest`` job.

The job (:func:`run_ingest`, in a worker): fetch the archive from the blob store, open it with limits
(:mod:`service.jobs.archive`), plan the items (labels from a top-level ``manifest.csv`` ``path,label,domain``,
else from ImageFolder sub-folders), then per batch: read → :func:`service.pipeline.probe` → already stored? →
:func:`service.pipeline.decode` → :func:`service.pipeline.encode` (one forward pass per batch) → blobs → one
transaction of image rows, codes and ``changes`` rows (:func:`service.blobs.commit_with_blobs`). The same
stages as a single upload, so both paths produce identical codes. Resubmitting the same archive finds every
image already stored (same bytes, same domain) and creates nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from model.errors import CheckpointError, DataError
from model.export import LoadedEncoder
from service import repository
from service.blobs import commit_with_blobs
from service.catalog import NewImage, image_values
from service.db import Database
from service.errors import PayloadTooLargeError, ServiceError, UnsupportedMediaTypeError
from service.jobs import queue
from service.jobs.archive import Archive, ArchiveError, Limits, Member, MemberError, sniff
from service.jobs.worker import JobContext, JobFailedError, Released
from service.models import Image, Job
from service.pipeline import ImageInfo, decode, encode, probe
from service.registry import load_registered
from service.schemas import DOMAIN_PATTERN
from service.settings import Settings
from service.storage import BlobStore, archive_key, check_archive_key, sha256_hex

log = logging.getLogger(__name__)

KIND = "ingest"
MANIFEST = "manifest.csv"
CHUNK = 1024 * 1024
LABEL_MAX = 256
_DOMAIN = re.compile(DOMAIN_PATTERN)


# ------------------------------------------------------------------------------------------------ submit


def _store_archive(settings: Settings, store: BlobStore, upload: IO[bytes]) -> tuple[str, str]:
    """Copy the upload into the blob ``archives/<sha256>``; returns ``(sha256, its key)``."""
    folder = settings.archives_dir
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".upload.{uuid.uuid4().hex}.tmp"
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            while chunk := upload.read(CHUNK):
                size += len(chunk)
                if size > settings.max_archive_bytes:
                    raise PayloadTooLargeError(
                        f"archive exceeds the limit of {settings.max_archive_bytes} bytes", code="archive_too_large"
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        try:
            sniff(tmp)
        except ArchiveError as exc:
            raise UnsupportedMediaTypeError(str(exc), code="not_an_archive") from exc
        hexdigest = digest.hexdigest()
        key = archive_key(hexdigest)
        store.put_file(key, tmp)  # durable before the job row that names it is committed
        return hexdigest, key
    finally:
        tmp.unlink(missing_ok=True)


def submit(settings: Settings, db: Database, store: BlobStore, upload: IO[bytes], domain: str) -> int:
    """Store an uploaded archive and queue its ingest job; returns the job id (blocking: call in a thread).

    Raises:
        PayloadTooLargeError: over ``max_archive_bytes``.
        UnsupportedMediaTypeError: not a zip or tar archive.
        BlobStoreError: the blob store cannot be used.
    """
    digest, key = _store_archive(settings, store, upload)
    with db.session() as session:
        job = queue.enqueue(session, KIND, {"archive": key, "sha256": digest, "domain": domain})
        session.commit()
        return job.id


# ------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Item:
    member: Member
    new: NewImage


def _is_junk(path: str) -> bool:
    parts = path.split("/")
    return parts[0] == "__MACOSX" or parts[-1].startswith(".")


def _manifest_items(context: JobContext, archive: Archive, domain: str) -> list[Item] | None:
    manifest = next((m for m in archive.members if m.name.removeprefix("./") == MANIFEST), None)
    if manifest is None:
        return None
    try:
        text = archive.read(manifest).decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text)))
    except (MemberError, UnicodeDecodeError, csv.Error) as exc:
        raise JobFailedError(f"{MANIFEST} cannot be read: {exc}", code="invalid_manifest") from exc
    if rows and "path" not in rows[0]:
        raise JobFailedError(f"{MANIFEST} needs a header with a 'path' column", code="invalid_manifest")
    by_name = {m.name.removeprefix("./"): m for m in archive.members}
    items = []
    for line, row in enumerate(rows, 2):
        path = (row.get("path") or "").strip().removeprefix("./")
        label = (row.get("label") or "").strip() or None
        row_domain = (row.get("domain") or "").strip() or domain
        where = f"{MANIFEST}:{line}"
        if (member := by_name.get(path)) is None:
            context.item_error(path or where, "missing_member", f"{where}: no such file in the archive")
        elif not _DOMAIN.fullmatch(row_domain):
            context.item_error(path, "invalid_domain", f"{where}: invalid domain {row_domain!r}")
        elif label is not None and len(label) > LABEL_MAX:
            context.item_error(path, "invalid_label", f"{where}: label longer than {LABEL_MAX} characters")
        else:
            items.append(Item(member, NewImage(row_domain, label, {"archive_path": path})))
    return items


def plan(context: JobContext, archive: Archive, domain: str) -> list[Item]:
    """The images to ingest; refused members are recorded as item errors."""
    for member in archive.members:
        if member.problem is not None:
            context.item_error(member.name, member.problem.code, str(member.problem))
    manifest = _manifest_items(context, archive, domain)
    if manifest is not None:
        return manifest
    items = []
    for member in archive.members:
        if member.problem is not None or _is_junk(member.name):
            continue
        parts = member.path.parts
        label = parts[-2][:LABEL_MAX] if len(parts) >= 2 else None  # ImageFolder: the class is the parent folder
        items.append(Item(member, NewImage(domain, label, {"archive_path": member.name})))
    return items


# --------------------------------------------------------------------------------------------------- run


@dataclass
class Prepared:
    item: Item
    data: bytes
    digest: str
    info: ImageInfo
    pixels: np.ndarray


@dataclass
class Tally:
    created: int = 0
    existing: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "existing": self.existing, "failed": self.failed}


def _batches(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class IngestJob:
    """The ``ingest`` handler; keeps the loaded encoder between jobs while the active model stays the same."""

    def __init__(self) -> None:
        self._encoder: LoadedEncoder | None = None

    def encoder(self, context: JobContext) -> LoadedEncoder:
        with context.db.session() as session:
            row = repository.active_model(session)
        if row is None:
            raise JobFailedError("no model is active: register one before ingesting", code="no_model")
        if self._encoder is None or self._encoder.metadata.get("model_version") != row.version:
            try:
                self._encoder = load_registered(context.store, row)
            except (CheckpointError, OSError) as exc:
                raise JobFailedError(f"the active model cannot be loaded: {exc}", code="model_unavailable") from exc
        return self._encoder

    def __call__(self, context: JobContext) -> dict[str, Any]:
        key = str(context.job.params["archive"])
        try:
            present = context.store.exists(check_archive_key(key))
        except ValueError:
            present = False
        if not present:
            raise JobFailedError(f"the archive {key} is missing from storage", code="archive_missing")
        keep = False
        try:
            with context.store.fetched(key, context.settings.archives_dir) as path:
                return self._run(context, path)
        except Released:
            keep = True  # the job goes back to the queue with its archive
            raise
        finally:
            if not keep:
                remove_archive(context, key)

    def _run(self, context: JobContext, path: Path) -> dict[str, Any]:
        params, settings = context.job.params, context.settings
        encoder = self.encoder(context)
        limits = Limits(
            settings.archive_max_members,
            settings.archive_max_total_bytes,
            settings.archive_max_ratio,
            settings.max_upload_bytes,
        )
        try:
            with Archive(path, limits) as archive:
                items = plan(context, archive, str(params["domain"]))
                tally = Tally(failed=len(context.errors))
                context.progress(0, len(items))
                done = 0
                for batch in _batches(items, settings.ingest_batch_size):
                    self._ingest_batch(context, archive, encoder, batch, tally)
                    done += len(batch)
                    context.progress(done)
        except ArchiveError as exc:
            raise JobFailedError(str(exc), code=exc.code) from exc
        return {**tally.as_dict(), "total": len(items), "model_version": str(encoder.metadata["model_version"])}

    def _prepare(self, context: JobContext, archive: Archive, encoder: LoadedEncoder, item: Item) -> Prepared | None:
        max_pixels = context.settings.max_pixels
        try:
            data = archive.read(item.member)
            info = probe(data, max_pixels)
            digest = sha256_hex(data)
            pixels = decode(encoder, data, max_pixels)
        except MemberError as exc:
            context.item_error(item.member.name, exc.code, str(exc))
            return None
        except ServiceError as exc:
            context.item_error(item.member.name, exc.code, exc.message)
            return None
        except DataError as exc:
            context.item_error(item.member.name, "unreadable_image", str(exc))
            return None
        return Prepared(item, data, digest, info, pixels)

    def _ingest_batch(
        self, context: JobContext, archive: Archive, encoder: LoadedEncoder, batch: Sequence[Item], tally: Tally
    ) -> None:
        prepared = [p for item in batch if (p := self._prepare(context, archive, encoder, item)) is not None]
        tally.failed += len(batch) - len(prepared)
        with context.db.session() as session:
            stored = repository.stored_keys(session, [(p.digest, p.item.new.domain) for p in prepared])
        ready: list[Prepared] = []
        for candidate in prepared:
            key = (candidate.digest, candidate.item.new.domain)
            if key in stored:
                tally.existing += 1
                continue
            stored.add(key)  # the same bytes twice in one archive count once
            ready.append(candidate)
        if not ready:
            return
        codes = encode(encoder, np.stack([p.pixels for p in ready]))
        version = str(encoder.metadata["model_version"])
        grace = context.settings.blob_grace_s

        def write(session: Session, paths: list[str]) -> None:
            values = [
                image_values(p.digest, p.info, len(p.data), stored_path, p.item.new)
                for p, stored_path in zip(ready, paths, strict=True)
            ]
            repository.add_images(session, [Image(**value) for value in values], [c.tobytes() for c in codes], version)

        try:
            commit_with_blobs(context.db, context.store, [p.data for p in ready], grace, write)
            tally.created += len(ready)
            return
        except IntegrityError:  # another writer stored some of these meanwhile: one at a time
            pass
        for candidate, code in zip(ready, codes, strict=True):
            self._add_one(context, candidate, code.tobytes(), version, tally)

    @staticmethod
    def _add_one(context: JobContext, candidate: Prepared, code: bytes, version: str, tally: Tally) -> None:
        def write(session: Session, paths: list[str]) -> None:
            new = candidate.item.new
            row = Image(**image_values(candidate.digest, candidate.info, len(candidate.data), paths[0], new))
            repository.add_image(session, row, code, version)

        try:
            commit_with_blobs(context.db, context.store, [candidate.data], context.settings.blob_grace_s, write)
            tally.created += 1
        except IntegrityError:
            tally.existing += 1


def remove_archive(context: JobContext, key: str) -> None:
    """Delete a finished job's archive unless another unfinished job (the same bytes resubmitted) needs it."""
    with context.db.session() as session:
        unfinished = (Job.kind == KIND) & (Job.id != context.job.id) & Job.status.in_([queue.QUEUED, queue.RUNNING])
        others: list[dict[str, Any]] = list(session.scalars(select(Job.params).where(unfinished)))
        if any(params.get("archive") == key for params in others):
            return
    context.store.delete(check_archive_key(key))
