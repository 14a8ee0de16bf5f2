"""The Milvus indexer without HTTP: its election, and applying the ``changes`` log idempotently (Milvus Lite,
SQLite and PostgreSQL). The cross-process take-over after a kill -9 is in test_milvus_server.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from index.milvus import MilvusIndex, MilvusOptions
from service import cursors, repository
from service.catalog import NewImage, image_values
from service.db import Database
from service.election import Leadership
from service.indexer import Indexer
from service.migrate import upgrade
from service.models import Image
from service.pipeline import ImageInfo
from service.storage import open_blob_store
from tests.service.conftest import make_settings

VERSION = "m16"


@pytest.fixture
def db(tmp_path: Path, database_url: str | None) -> Iterator[Database]:
    url = database_url or f"sqlite:///{tmp_path / 'metah.db'}"
    upgrade(url)
    database = Database(url)
    with database.session() as session:
        repository.add_model(session, version=VERSION, artefact_path="none.pt", bits=16, metrics={}, meta={})
        repository.activate_model(session, VERSION)
        session.commit()
    yield database
    database.close()


def add_rows(
    db: Database, n: int, seed: int, domain: str = "d", version: str = VERSION
) -> tuple[list[int], np.ndarray]:
    """``n`` image rows with random 16-bit codes of ``version`` (no blobs: the indexer reads codes only)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 2), dtype=np.uint8)
    info = ImageInfo("image/png", 1, 1)
    rows = [
        Image(**image_values(f"{seed:08x}{i:056x}", info, 1, f"k{seed}-{i}", NewImage(domain=domain))) for i in range(n)
    ]
    with db.session() as session:
        repository.add_images(session, rows, [c.tobytes() for c in codes], version)
        session.commit()
        ids = [row.id for row in session.query(Image.id).where(Image.stored_path.like(f"k{seed}-%")).order_by(Image.id)]
    return ids, codes


def delete_rows(db: Database, ids: list[int]) -> None:
    with db.session() as session:
        for image_id in ids:
            repository.delete_image(session, session.get(Image, image_id))  # type: ignore[arg-type]
        session.commit()


def contents(index: MilvusIndex, ids: list[int]) -> dict[int, bytes]:
    found = {}
    for image_id in ids:
        if (entry := index.lookup(image_id)) is not None:
            found[image_id] = entry[1].tobytes()
    return found


def test_the_indexer_applies_the_log_idempotently(db: Database, tmp_path: Path, milvus_client: Any) -> None:
    settings = make_settings(tmp_path / "data", database_url=str(db.engine.url.render_as_string(False)))
    options = MilvusOptions(lite=True, prefix="idem")
    indexer = Indexer(settings, db, open_blob_store(settings), milvus_client, options, chunk=7)
    ids, codes = add_rows(db, 20, seed=1)
    indexer.run_round()  # the active model had no collection: built from the codes
    with db.session() as session:
        built = cursors.cursor_of(session, VERSION)
    assert built is not None and built.state == cursors.READY
    more, more_codes = add_rows(db, 30, seed=2, domain="e")
    delete_rows(db, ids[:5] + more[:5])
    assert indexer.run_round() == 40  # 30 adds and 10 deletes, 7 a chunk
    index = MilvusIndex(milvus_client, 16, VERSION, milvus=options)
    expected = {i: c.tobytes() for i, c in zip(ids + more, [*codes, *more_codes], strict=True)}
    for gone in ids[:5] + more[:5]:
        del expected[gone]
    assert contents(index, ids + more) == expected and index.domains() == {"d": 15, "e": 25}

    with db.session() as session:  # a leader killed before it stored its cursor: the next one starts over
        session.execute(text("UPDATE index_cursors SET change = 0"))
        session.commit()
    assert indexer.run_round() > 0
    assert contents(index, ids + more) == expected and len(index) == 40
    with db.session() as session:
        last = repository.last_change(session)
        assert cursors.cursor_of(session, VERSION).change == last  # type: ignore[union-attr]
    assert cursors.wait_indexed(db, last, 0) and not cursors.wait_indexed(db, last + 1, 0.2)
    index.drop()


def test_one_process_leads_and_another_takes_over_when_it_goes(db: Database) -> None:
    first, second = Leadership(db), Leadership(Database(str(db.engine.url.render_as_string(False))))
    try:
        assert first.try_acquire() and first.held()
        assert not second.try_acquire() and not second.leading
        if db.engine.dialect.name == "postgresql":  # the lock's connection cut (a dead process, a failover)
            with db.engine.connect() as connection:
                pid = first._connection.scalar(text("SELECT pg_backend_pid()"))  # type: ignore[union-attr]
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            assert not first.held() and not first.leading
        else:
            first.release()
        assert second.try_acquire() and second.held()
        assert not first.try_acquire()
    finally:
        first.release()
        second.release()
        second.db.close()
