"""Content-addressed storage of original image bytes under ``data_dir/images``.

A blob's path is derived from its SHA-256 alone (``images/ab/cd/abcd…``), never from a user-supplied name, so
no upload can choose where it is written. Writes are atomic and durable (temporary file, fsync, rename, fsync
of the folder, whose entry the rename changed); writing bytes that are already stored is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path

IMAGES = "images"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


class BlobStore:
    """Blobs keyed by SHA-256, stored under ``root`` (the data dir); paths in the DB are relative to it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @staticmethod
    def relative_path(digest: str) -> str:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
        return f"{IMAGES}/{digest[:2]}/{digest[2:4]}/{digest}"

    def path(self, relative: str) -> Path:
        """The file of a stored path; refuses anything that is not a blob path of this store."""
        digest = relative.rsplit("/", 1)[-1]
        if relative != self.relative_path(digest):
            raise ValueError(f"not a blob path: {relative!r}")
        return self.root / relative

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
        """Write ``data`` under its digest (temporary file, then rename) unless it is already there.

        A fan-out folder is made only when the temporary file cannot be created in it (a bulk job writes
        thousands of files into 65,536 folders; a ``mkdir`` per file was 5 % of the job).
        """
        digest = sha256_hex(data)
        relative = self.relative_path(digest)
        target = self.root / relative
        with contextlib.suppress(FileNotFoundError):
            existing = target.stat()
            if stat.S_ISREG(existing.st_mode) and existing.st_size == len(data):
                return relative, False
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
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if sync:  # the rename, and any folder just made, are entries of their parent folders
            for folder in self._folders_of(target) if made_folders else [target.parent]:
                fsync_folder(folder)
        return relative, True

    def delete(self, relative: str) -> None:
        """Remove a blob (absent is fine)."""
        self.path(relative).unlink(missing_ok=True)
