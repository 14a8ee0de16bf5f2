"""The content-addressed blob store: paths from the digest alone, atomic writes, no leftovers."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from service.storage import LocalBlobStore, sha256_hex


def test_put_many_writes_each_blob_once_under_its_digest(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    blobs = [b"first image", b"second image", b"first image"]
    paths = store.put_many(blobs)
    assert (
        paths[0] == paths[2] == f"images/{sha256_hex(blobs[0])[:2]}/{sha256_hex(blobs[0])[2:4]}/{sha256_hex(blobs[0])}"
    )
    assert [store.path(p).read_bytes() for p in paths] == blobs
    assert store.put(b"second image") == (paths[1], False)  # already there: not written again
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_fan_out_folder_removed_behind_the_store_is_made_again(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    relative, _ = store.put(b"one")
    shutil.rmtree(tmp_path / "images")
    assert store.put(b"one") == (relative, True)
    assert store.path(relative).read_bytes() == b"one"


def test_a_truncated_copy_is_replaced(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    relative, _ = store.put(b"complete bytes")
    store.path(relative).write_bytes(b"comp")
    assert store.put(b"complete bytes") == (relative, True)
    assert store.path(relative).read_bytes() == b"complete bytes"


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path)

    def no_space(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("service.storage.os.link", no_space)
    with pytest.raises(OSError, match="No space"):
        store.put_many([b"will not fit"])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


class FsyncLog:
    """Records, in order, the new names (links, renames) and the folders fsynced (by inode) through
    ``service.storage``'s ``os``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, int]] = []
        real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

        def fsync(descriptor: int) -> None:
            status = os.fstat(descriptor)
            if stat.S_ISDIR(status.st_mode):
                self.events.append(("fsync folder", status.st_ino))
            real_fsync(descriptor)

        def replace(src: Path, dst: Path) -> None:
            real_replace(src, dst)
            self.events.append(("rename", os.stat(dst).st_ino))

        def link(src: Path, dst: Path) -> None:
            real_link(src, dst)
            self.events.append(("rename", os.stat(dst).st_ino))

        monkeypatch.setattr("service.storage.os.fsync", fsync)
        monkeypatch.setattr("service.storage.os.replace", replace)
        monkeypatch.setattr("service.storage.os.link", link)

    def folders_synced_after_last_rename(self) -> set[int]:
        last = max(i for i, (what, _) in enumerate(self.events) if what == "rename")
        return {inode for what, inode in self.events[last:] if what == "fsync folder"}


@pytest.mark.parametrize("fan_out_exists", [False, True])
def test_put_syncs_the_folder_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fan_out_exists: bool
) -> None:
    """The rename is only durable once the folder holding it is fsynced; folders just made need their own
    parents synced too, up to the store's root."""
    store = LocalBlobStore(tmp_path)
    target = store.path(store.relative_path(sha256_hex(b"one image")))
    if fan_out_exists:
        target.parent.mkdir(parents=True)
    log = FsyncLog(monkeypatch)
    store.put(b"one image")
    made = [target.parent, tmp_path / "images" / target.parent.parent.name, tmp_path / "images", tmp_path]
    expected = made[:1] if fan_out_exists else made
    assert log.folders_synced_after_last_rename() >= {folder.stat().st_ino for folder in expected}


def test_put_many_without_syncfs_syncs_the_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path)
    monkeypatch.setattr("service.storage._syncfs", lambda folder: False)
    log = FsyncLog(monkeypatch)
    paths = store.put_many([b"first image", b"second image"])
    folders = {store.path(p).parent for p in paths} | {tmp_path / "images", tmp_path}
    assert log.folders_synced_after_last_rename() >= {folder.stat().st_ino for folder in folders}
