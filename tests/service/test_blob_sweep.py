"""The blob sweep's parts (service/blobs.py): strays found in the store's listing, a sweep that fails half-way,
a writer slower than half the grace period. The race itself across processes: tests/service/test_blob_race.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from service.blobs import commit_with_blobs, mark_strays, sweep
from service.cli import main
from service.db import Database
from service.migrate import upgrade
from service.models import LooseBlob
from service.storage import BlobStore, BlobStoreError, LocalBlobStore, sha256_hex
from service.storage_s3 import S3BlobStore
from tests.s3server import fresh_bucket
from tests.service.conftest import make_settings
from tests.service.library import image_row


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url)
    database = Database(url)
    yield database
    database.close()


def add_row(db: Database, key: str, data: bytes) -> None:
    with db.session() as session:
        session.add(image_row(data, key, "d", None, side=1))
        session.commit()


def entries(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(LooseBlob.sha256)))


def swept_after_grace(db: Database, store: BlobStore) -> int:
    time.sleep(0.01)
    return sweep(db, store, 0.001)


@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_strays_no_row_references_are_marked_then_swept_after_the_grace_period(
    request: pytest.FixtureRequest, tmp_path: Path, db: Database, store_kind: str
) -> None:
    store: BlobStore = LocalBlobStore(tmp_path / "data")
    if store_kind == "s3":
        request.getfixturevalue("s3_environ")
        store = S3BlobStore(fresh_bucket(), "sweep")
    store.create_if_missing()
    kept, stray = b"referenced bytes", b"bytes a failed delete left behind"
    kept_key, stray_key = store.put(kept)[0], store.put(stray)[0]
    add_row(db, kept_key, kept)
    assert sorted(store.image_keys()) == sorted([kept_key, stray_key])

    assert sweep(db, store, 3600) == 0  # nothing marked: a sweep alone never looks at the listing
    assert mark_strays(db, store) == 1 and entries(db) == [sha256_hex(stray)]
    assert sweep(db, store, 3600) == 0 and store.exists(stray_key)  # within the grace period
    assert swept_after_grace(db, store) == 1
    assert not store.exists(stray_key) and store.exists(kept_key) and entries(db) == []


def test_metah_sweep_blobs_strays(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path, blob_grace_s=0.001)
    for name, value in {"DATA_DIR": str(tmp_path), "DATABASE_URL": settings.sqlalchemy_url}.items():
        monkeypatch.setenv(f"METAH_{name}", value)
    monkeypatch.setenv("METAH_BLOB_GRACE_S", "0.001")
    store = LocalBlobStore(tmp_path)
    key = store.put(b"a stray")[0]
    assert main(["sweep-blobs"]) == 0
    assert store.exists(key) and "0 blobs removed" in capsys.readouterr().out
    assert main(["sweep-blobs", "--strays"]) == 0  # marked, then swept: the grace period (1 ms) has passed
    out = capsys.readouterr().out
    assert "1 blobs no row references found and marked" in out and "1 blobs removed" in out
    assert not store.exists(key)


class FailingDeletes(LocalBlobStore):
    """Removes the first blob asked, then S3 "fails"."""

    deleted = 0

    def delete(self, relative: str) -> None:
        if self.deleted:
            raise BlobStoreError("S3 failed", reason="it answered 500")
        self.deleted += 1
        super().delete(relative)


def test_a_sweep_that_fails_half_way_leaves_every_entry_of_its_batch_for_the_next(tmp_path: Path, db: Database) -> None:
    store = LocalBlobStore(tmp_path)
    blobs = [b"first", b"second", b"third"]
    keys = [store.put(data)[0] for data in blobs]
    commit_with_blobs(db, store, blobs, 3600, lambda session, paths: None)  # stored, no rows: entries taken
    assert mark_strays(db, store) == 3
    with pytest.raises(BlobStoreError):
        swept_after_grace(db, FailingDeletes(tmp_path))
    assert sorted(entries(db)) == sorted(sha256_hex(data) for data in blobs)
    assert swept_after_grace(db, store) == 3
    assert not any(store.exists(key) for key in keys) and entries(db) == []


class SlowFirstPut(LocalBlobStore):
    """The first put stalls past half the grace period, and the sweep removes the blob meanwhile."""

    puts = 0

    def put(self, data: bytes) -> tuple[str, bool]:
        self.puts += 1
        stored = super().put(data)
        if self.puts == 1:
            time.sleep(0.6)
            super().delete(stored[0])  # what a sweep may do once the writer is past its deadline
        return stored


def test_a_writer_slower_than_half_the_grace_period_stores_its_blob_again(tmp_path: Path, db: Database) -> None:
    store, data = SlowFirstPut(tmp_path), b"slow bytes"

    def write(session: object, paths: list[str]) -> str:
        return paths[0]

    key = commit_with_blobs(db, store, [data], 1.0, write)
    assert store.puts == 2 and store.exists(key) and entries(db) == []
