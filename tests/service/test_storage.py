"""The content-addressed blob store: paths from the digest alone, atomic writes, no leftovers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.storage import BlobStore, sha256_hex


def test_put_many_writes_each_blob_once_under_its_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blobs = [b"first image", b"second image", b"first image"]
    paths = store.put_many(blobs)
    assert (
        paths[0] == paths[2] == f"images/{sha256_hex(blobs[0])[:2]}/{sha256_hex(blobs[0])[2:4]}/{sha256_hex(blobs[0])}"
    )
    assert [store.path(p).read_bytes() for p in paths] == blobs
    assert store.put(b"second image") == (paths[1], False)  # already there: not written again
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_fan_out_folder_removed_behind_the_store_is_made_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    relative, _ = store.put(b"one")
    shutil.rmtree(tmp_path / "images")
    assert store.put(b"one") == (relative, True)
    assert store.path(relative).read_bytes() == b"one"


def test_a_truncated_copy_is_replaced(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    relative, _ = store.put(b"complete bytes")
    store.path(relative).write_bytes(b"comp")
    assert store.put(b"complete bytes") == (relative, True)
    assert store.path(relative).read_bytes() == b"complete bytes"


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)

    def no_space(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("service.storage.os.replace", no_space)
    with pytest.raises(OSError, match="No space"):
        store.put_many([b"will not fit"])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
