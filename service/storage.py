"""Content-addressed storage of original image bytes: a local folder (the default) or an S3 bucket.

A blob's key is derived from its SHA-256 alone (``images/ab/cd/abcd…``), never from a user-supplied name, so no
upload can choose where it is written; the database stores that key (``stored_path``). Blobs are write-once:
storing bytes that are already there changes nothing and says so.

:class:`BlobStore` is what the service uses; :func:`open_blob_store` picks the implementation from the settings
(CONTRACT §5): :class:`LocalBlobStore` under ``METAH_DATA_DIR`` (atomic and durable writes: temporary file, fsync,
link to the blob's name, fsync of the folder whose entry that made) or, with ``METAH_BLOB_URL=s3://bucket/prefix``,
:class:`S3BlobStore` (endpoint, region and credentials from the standard AWS variables, read by boto3).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from service.settings import Settings

IMAGES = "images"
_KEY = re.compile(rf"{IMAGES}/([0-9a-f]{{2}})/([0-9a-f]{{2}})/([0-9a-f]{{64}})")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class BlobNotFoundError(FileNotFoundError):
    """No blob is stored under this key (a ``FileNotFoundError``, so callers that handle a missing file still do)."""


class BlobStoreError(RuntimeError):
    """The store cannot be used as configured (a bad ``METAH_BLOB_URL``, a missing bucket)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_key(digest: str) -> str:
    """The key of the blob whose SHA-256 is ``digest`` (lower-case hex): ``images/ab/cd/<digest>``."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
    return f"{IMAGES}/{digest[:2]}/{digest[2:4]}/{digest}"


def check_key(key: str) -> str:
    """``key`` if it is a blob key of this layout; anything else (``..``, an absolute path, a prefix, another
    file of the data dir) is refused with ``ValueError``."""
    match = _KEY.fullmatch(key)
    if match is None or match[3][:2] != match[1] or match[3][2:4] != match[2]:
        raise ValueError(f"not a blob path: {key!r}")
    return key


class BlobStore(Protocol):
    """Write-once blobs keyed by their SHA-256 (:func:`blob_key`). Every method refuses a key that is not a blob
    key (``ValueError``); reading a key that holds nothing raises :class:`BlobNotFoundError`."""

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` unless it is already there; returns ``(key, whether this call stored it)``."""
        ...

    def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Store a batch (each blob as :meth:`put` does); returns the keys, in order."""
        ...

    def get(self, key: str) -> bytes:
        """All the bytes of a blob."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A binary stream over a blob (close it, or use it as a context manager)."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """The blob's length in bytes."""
        ...

    def delete(self, key: str) -> None:
        """Remove a blob (absent is fine)."""
        ...

    def presigned_url(self, key: str, expires_s: int = 300) -> str | None:
        """A URL that lets its holder GET the blob for ``expires_s`` seconds, without credentials; ``None`` where
        the store has no such URLs (then stream :meth:`open`)."""
        ...

    def create_if_missing(self) -> bool:
        """Make the store's container (folder, bucket) when it is missing; ``True`` when this call made it."""
        ...


def parse_blob_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → ``(bucket, prefix)`` (the prefix without its slashes, ``""`` when there is none);
    ``ValueError`` for another scheme, a bucket name S3 refuses, or a prefix with empty, ``.`` or ``..`` parts."""
    scheme, _, rest = url.partition("://")
    if scheme != "s3" or not rest:
        raise ValueError(f"METAH_BLOB_URL must look like s3://bucket/prefix, not {url!r}")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"not an S3 bucket name: {bucket!r} (3-63 of a-z, 0-9, '.', '-')")
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(f"not an S3 key prefix: {prefix!r}")
    return bucket, prefix


def open_blob_store(settings: Settings) -> BlobStore:
    """The store ``settings`` select: ``METAH_BLOB_URL=s3://bucket/prefix``, else the data dir."""
    if settings.blob_url:
        from service.storage_s3 import S3BlobStore  # boto3 is imported only by those who use S3

        return S3BlobStore.from_url(settings.blob_url)
    return LocalBlobStore(settings.data_dir)


def open_local_blob_store(settings: Settings) -> LocalBlobStore:
    """The local store, for the code that still reads blobs by file path (``LocalBlobStore.path``: the change
    follower, the activation and training jobs, the content route). Refuses ``METAH_BLOB_URL`` rather than
    silently storing images in the data dir; goes away once those callers read through :class:`BlobStore`."""
    if settings.blob_url:
        raise BlobStoreError(
            f"METAH_BLOB_URL={settings.blob_url} is not served yet: `metah serve` and `metah worker` still read "
            "images from the data dir (issue 13); unset it"
        )
    return LocalBlobStore(settings.data_dir)


def _syncfs(folder: Path) -> bool:
    """Flush the whole file system holding ``folder`` (Linux ``syncfs``); ``False`` where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed", str(folder))
    finally:
        os.close(descriptor)
    return True


def fsync_folder(folder: Path) -> None:
    """Make the entries of ``folder`` durable (a rename or a new file is only on disk once its folder is)."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class LocalBlobStore:
    """:class:`BlobStore` in a folder: blobs under ``root`` (the data dir); a key is a path relative to it."""

    relative_path = staticmethod(blob_key)

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, relative: str) -> Path:
        """The file of a stored path; refuses anything that is not a blob path of this store."""
        return self.root / check_key(relative)

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` durably (fsync); returns ``(relative path, whether this call wrote the file)``."""
        return self._write(data, sync=True)

    def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Store a batch; returns the relative paths. Made durable together: the files are written and renamed,
        then one ``syncfs`` flushes the file system (one ``fsync`` per file where ``syncfs`` is missing).
        Measured on a 3,000-image ingest job: 1.2 s of the job's 10.3 s went to per-file fsyncs."""
        results = [self._write(data, sync=False) for data in blobs]
        written = [self.root / relative for relative, new in results if new]
        if written and not _syncfs(self.root):
            for target in written:
                with open(target, "rb") as handle:
                    os.fsync(handle.fileno())
            for folder in sorted({folder for target in written for folder in self._folders_of(target)}):
                fsync_folder(folder)
        return [relative for relative, _ in results]

    def _folders_of(self, target: Path) -> list[Path]:
        """The folders from a blob's up to the store's root: ``images/ab/cd``, ``images/ab``, ``images``, root."""
        return [folder for folder in target.parents if folder.is_relative_to(self.root)]

    def _write(self, data: bytes, *, sync: bool) -> tuple[str, bool]:
        """Write ``data`` under its digest (temporary file, then a hard link to the blob's name) unless it is
        already there. The link fails when another writer got there first, so of several racing writers of the
        same bytes exactly one is told it stored them, as S3's conditional PUT does. A truncated copy (another
        size) is replaced by a rename instead.

        A fan-out folder is made only when the temporary file cannot be created in it (a bulk job writes
        thousands of files into 65,536 folders; a ``mkdir`` per file was 5 % of the job).
        """
        digest = sha256_hex(data)
        relative = blob_key(digest)
        target = self.root / relative
        damaged = False
        with contextlib.suppress(FileNotFoundError):
            existing = target.stat()
            if stat.S_ISREG(existing.st_mode) and existing.st_size == len(data):
                return relative, False
            damaged = True
        tmp = target.with_name(f".{digest}.{uuid.uuid4().hex}.tmp")
        made_folders = False
        try:
            try:
                handle = open(tmp, "xb")  # noqa: SIM115  # closed below, on every path
            except FileNotFoundError:
                target.parent.mkdir(parents=True, exist_ok=True)
                made_folders = True
                handle = open(tmp, "xb")  # noqa: SIM115
            with handle:
                handle.write(data)
                if sync:
                    handle.flush()
                    os.fsync(handle.fileno())
            if damaged:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)
                except FileExistsError:  # another writer stored the same bytes meanwhile
                    return relative, False
        finally:
            tmp.unlink(missing_ok=True)
        if sync:  # the new name, and any folder just made, are entries of their parent folders
            for folder in self._folders_of(target) if made_folders else [target.parent]:
                fsync_folder(folder)
        return relative, True

    def delete(self, relative: str) -> None:
        """Remove a blob (absent is fine)."""
        self.path(relative).unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {key}") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")  # the caller closes it
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {key}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {key}") from None

    def presigned_url(self, key: str, expires_s: int = 300) -> str | None:
        check_key(key)
        return None

    def create_if_missing(self) -> bool:
        folder = self.root / IMAGES
        if folder.is_dir():
            return False
        folder.mkdir(parents=True, exist_ok=True)
        return True
