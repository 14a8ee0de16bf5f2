"""Write-once blobs: original image bytes, model files, uploaded archives and training checkpoints, in a local
folder (the default) or an S3 bucket.

Four key spaces. An image's key is derived from its SHA-256 alone (``images/ab/cd/abcd…``), never from a
user-supplied name, so no upload can choose where it is written; the database stores that key (``stored_path``).
A model version's files (the encoder artefact and the figures of its training run) are ``models/<version>/
<name>`` (:func:`model_key`: a safe version name, one of :data:`MODEL_FILES`); ``model_versions.artefact_path``
stores the artefact's key. An uploaded archive waiting for its ingest job is ``archives/<sha256>``
(:func:`archive_key`), stored from a file and read back as one (:meth:`BlobStore.fetched`), so the worker that
runs the job needs no disk in common with the API that took the upload. A training job's latest checkpoint is
``checkpoints/job-<id>-step-<step>.pt`` (:func:`checkpoint_key`), stored from a file too, so that a retry of the
job on any worker resumes from it (:mod:`service.jobs.training`). Blobs are write-once: storing bytes where a
blob already is changes nothing and says so (an archive or a checkpoint stored again under its key is replaced by
bytes as good: the same archive, a checkpoint of the same job at the same step). No code outside the stores reads
them by file path.

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
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from service.settings import Settings

IMAGES = "images"
MODELS = "models"
ARCHIVES = "archives"
CHECKPOINTS = "checkpoints"
ARTEFACT = "model.pt"
# A model version's files: the encoder artefact and the training run's figures (model/train.py writes them beside
# model.pt; GET /v1/models/{version}/plots/{name} serves them).
PLOT_FILES = ("loss_curves.png", "pr_curve.png")
MODEL_FILES = (ARTEFACT, *PLOT_FILES)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a model version as a key (or file name) part
_KEY = re.compile(rf"{IMAGES}/([0-9a-f]{{2}})/([0-9a-f]{{2}})/([0-9a-f]{{64}})")
_MODEL_KEY = re.compile(f"{MODELS}/({SAFE_NAME.pattern})/([^/]+)")
_ARCHIVE_KEY = re.compile(rf"{ARCHIVES}/[0-9a-f]{{64}}")
_CHECKPOINT_KEY = re.compile(rf"{CHECKPOINTS}/job-([1-9][0-9]{{0,17}})-step-([1-9][0-9]{{0,17}})\.pt")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class BlobNotFoundError(FileNotFoundError):
    """No blob is stored under this key (a ``FileNotFoundError``, so callers that handle a missing file still do)."""


class BlobStoreError(RuntimeError):
    """The store cannot be used: a missing bucket, an endpoint that does not answer, refused credentials, a
    versioned bucket. ``reason`` says which in a few words without naming endpoints or buckets (what an HTTP
    client is told: 503 ``storage_unavailable``); the message has the details (for the log and the CLI)."""

    def __init__(self, message: str, *, reason: str = "it cannot be used") -> None:
        super().__init__(message)
        self.reason = reason


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_digest(digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
    return digest


def blob_key(digest: str) -> str:
    """The key of the blob whose SHA-256 is ``digest`` (lower-case hex): ``images/ab/cd/<digest>``."""
    _check_digest(digest)
    return f"{IMAGES}/{digest[:2]}/{digest[2:4]}/{digest}"


def image_digest(key: str) -> str | None:
    """The SHA-256 an image's key names (:func:`blob_key`); ``None`` for any other key."""
    match = _KEY.fullmatch(key)
    if match is None or match[3][:2] != match[1] or match[3][2:4] != match[2]:
        return None
    return match[3]


def archive_key(digest: str) -> str:
    """The key of an uploaded archive whose SHA-256 is ``digest``: ``archives/<digest>``."""
    return f"{ARCHIVES}/{_check_digest(digest)}"


def check_archive_key(key: str) -> str:
    """``key`` if it is an archive's key (:func:`archive_key`); ``ValueError`` otherwise."""
    if _ARCHIVE_KEY.fullmatch(key) is None:
        raise ValueError(f"not a blob path of an archive: {key!r}")
    return key


def checkpoint_key(job_id: int, step: int) -> str:
    """The key of training job ``job_id``'s checkpoint at ``step`` (both positive):
    ``checkpoints/job-<id>-step-<step>.pt``."""
    if job_id < 1 or step < 1:
        raise ValueError(f"no checkpoint key for job {job_id} at step {step}")
    return f"{CHECKPOINTS}/job-{job_id}-step-{step}.pt"


def checkpoint_of(key: str) -> tuple[int, int] | None:
    """The ``(job id, step)`` a checkpoint's key names (:func:`checkpoint_key`); ``None`` for any other key."""
    match = _CHECKPOINT_KEY.fullmatch(key)
    return None if match is None else (int(match[1]), int(match[2]))


def check_file_key(key: str) -> str:
    """``key`` if it names a blob stored from a file (an archive's or a checkpoint's key); ``ValueError``
    otherwise."""
    if _ARCHIVE_KEY.fullmatch(key) is None and _CHECKPOINT_KEY.fullmatch(key) is None:
        raise ValueError(f"not a blob path of an archive or a checkpoint: {key!r}")
    return key


def model_key(version: str, name: str = ARTEFACT) -> str:
    """The key of model ``version``'s file ``name`` (one of :data:`MODEL_FILES`): ``models/<version>/<name>``;
    ``ValueError`` for a version that is not a safe name, or another file name."""
    return check_model_key(f"{MODELS}/{version}/{name}")


def check_model_key(key: str) -> str:
    """``key`` if it is a model file's key (:func:`model_key`); ``ValueError`` otherwise."""
    match = _MODEL_KEY.fullmatch(key)
    if match is None or match[2] not in MODEL_FILES:
        raise ValueError(f"not a blob path of a model file: {key!r}")
    return key


def check_key(key: str) -> str:
    """``key`` if it is a blob key of this layout (an image's, a model file's, an archive's or a checkpoint's);
    anything else (``..``, an absolute path, a prefix, another file of the data dir) is refused with
    ``ValueError``."""
    match = _KEY.fullmatch(key)
    if match is not None and match[3][:2] == match[1] and match[3][2:4] == match[2]:
        return key
    if (model := _MODEL_KEY.fullmatch(key)) is not None and model[2] in MODEL_FILES:
        return key
    if _ARCHIVE_KEY.fullmatch(key) is not None or _CHECKPOINT_KEY.fullmatch(key) is not None:
        return key
    raise ValueError(f"not a blob path: {key!r}")


class BlobStore(Protocol):
    """Write-once blobs: images keyed by their SHA-256 (:func:`blob_key`), model files by version and name
    (:func:`model_key`), archives (:func:`archive_key`) and checkpoints (:func:`checkpoint_key`). Every method
    refuses a key that is not a blob key (``ValueError``); reading a key that holds nothing raises
    :class:`BlobNotFoundError`; a store that cannot be used raises :class:`BlobStoreError`."""

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` unless it is already there; returns ``(key, whether this call stored it)``."""
        ...

    def put_at(self, key: str, data: bytes) -> bool:
        """Store a model file under its key (:func:`model_key`) unless a blob is there already; ``True`` when
        this call stored it. Image keys are refused (``put`` names them)."""
        ...

    def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Store a batch (each blob as :meth:`put` does); returns the keys, in order."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Store the file ``path`` (an upload or a checkpoint, possibly large: streamed, never read into memory)
        under an archive's or a checkpoint's key (:func:`check_file_key`) and take it: once this returns, ``path``
        is gone. On failure it stays."""
        ...

    def fetched(self, key: str, scratch: Path) -> AbstractContextManager[Path]:
        """A local file holding the blob while the ``with`` block runs (read it, do not change it): the local
        store's own file, or a download into a temporary file in the folder ``scratch``, removed afterwards."""
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

    def image_keys(self) -> Iterator[str]:
        """The keys of every image blob stored, in no particular order (the blob sweep's look for strays)."""
        ...

    def checkpoint_keys(self, job_id: int | None = None) -> Iterator[str]:
        """The keys of the checkpoints stored for training job ``job_id`` (default: for every job), in no
        particular order."""
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
        """The file of a stored path; refuses anything that is not a blob path of this store. For this store's
        own methods and tests: the service reads blobs through :class:`BlobStore`, whatever the store."""
        return self.root / check_key(relative)

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` durably (fsync); returns ``(relative path, whether this call wrote the file)``."""
        relative = blob_key(sha256_hex(data))
        return relative, self._write(relative, data, sync=True)

    def put_at(self, key: str, data: bytes) -> bool:
        return self._write(check_model_key(key), data, sync=True, repair=False)

    def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Store a batch; returns the relative paths. Made durable together: the files are written and renamed,
        then one ``syncfs`` flushes the file system (one ``fsync`` per file where ``syncfs`` is missing).
        Measured on a 3,000-image ingest job: 1.2 s of the job's 10.3 s went to per-file fsyncs."""
        keys = [blob_key(sha256_hex(data)) for data in blobs]
        written = [self.root / key for key, data in zip(keys, blobs, strict=True) if self._write(key, data, sync=False)]
        if written and not _syncfs(self.root):
            for target in written:
                with open(target, "rb") as handle:
                    os.fsync(handle.fileno())
            for folder in sorted({folder for target in written for folder in self._folders_of(target)}):
                fsync_folder(folder)
        return keys

    def put_file(self, key: str, path: Path) -> None:
        """A rename into place (then an fsync of the folder): ``path`` must be on the store's file system (the
        API writes uploads in ``data_dir/archives``, training jobs their checkpoints in ``data_dir/training``)."""
        target = self.root / check_file_key(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        fsync_folder(target.parent)

    @contextlib.contextmanager
    def fetched(self, key: str, scratch: Path) -> Iterator[Path]:
        path = self.path(key)
        if not path.is_file():
            raise BlobNotFoundError(f"no blob {key}")
        yield path

    def _folders_of(self, target: Path) -> list[Path]:
        """The folders from a blob's up to the store's root: ``images/ab/cd``, ``images/ab``, ``images``, root."""
        return [folder for folder in target.parents if folder.is_relative_to(self.root)]

    def _write(self, relative: str, data: bytes, *, sync: bool, repair: bool = True) -> bool:
        """Write ``data`` under ``relative`` (temporary file, then a hard link to the blob's name) unless it is
        already there; ``True`` when this call wrote it. The link fails when another writer got there first, so
        of several racing writers of the same bytes exactly one is told it stored them, as S3's conditional PUT
        does. With ``repair`` (an image key: its name is its digest), a truncated copy (another size) is replaced
        by a rename instead; a model file, named by its version, stays as it is.

        A fan-out folder is made only when the temporary file cannot be created in it (a bulk job writes
        thousands of files into 65,536 folders; a ``mkdir`` per file was 5 % of the job).
        """
        target = self.root / relative
        damaged = False
        with contextlib.suppress(FileNotFoundError):
            existing = target.stat()
            if stat.S_ISREG(existing.st_mode) and (existing.st_size == len(data) or not repair):
                return False
            damaged = True
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
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
                    return False
        finally:
            tmp.unlink(missing_ok=True)
        if sync:  # the new name, and any folder just made, are entries of their parent folders
            for folder in self._folders_of(target) if made_folders else [target.parent]:
                fsync_folder(folder)
        return True

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

    def image_keys(self) -> Iterator[str]:
        for path in (self.root / IMAGES).glob("*/*/*"):
            key = path.relative_to(self.root).as_posix()
            if image_digest(key) is not None:  # not a temporary file
                yield key

    def checkpoint_keys(self, job_id: int | None = None) -> Iterator[str]:
        pattern = "job-*-step-*.pt" if job_id is None else f"job-{job_id}-step-*.pt"
        for path in (self.root / CHECKPOINTS).glob(pattern):
            key = path.relative_to(self.root).as_posix()
            if checkpoint_of(key) is not None:
                yield key

    def create_if_missing(self) -> bool:
        folder = self.root / IMAGES
        if folder.is_dir():
            return False
        folder.mkdir(parents=True, exist_ok=True)
        return True
