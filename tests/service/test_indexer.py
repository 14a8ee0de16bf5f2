"""The Milvus indexer without HTTP: its election, applying the ``changes`` log idempotently, a build seen to
progress, and an activation with no indexer (Milvus Lite, SQLite and PostgreSQL). The cross-process take-over
after a kill -9 is in test_milvus_server.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from index.milvus import MilvusIndex, MilvusOptions, collection_name
from service import cursors, outbox, repository
from service import indexer as indexer_module
from service.catalog import NewImage, image_values
from service.db import Database
from service.election import Leadership
from service.indexer import Indexer, start_indexer
from service.jobs import activation, queue
from service.jobs.process import handlers
from service.jobs.worker import Worker
from service.migrate import upgrade
from service.models import Image, IndexCursor, Job
from service.pipeline import ImageInfo
from service.registry import register_artefact
from service.storage import open_blob_store
from tests.service.conftest import free_port, make_settings

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


def test_a_deposed_leader_stops_before_its_next_write(db: Database, tmp_path: Path, milvus_client: Any) -> None:
    """A leader whose lock is gone (``held`` answers no) writes nothing more: not the new changes, not a cursor."""
    settings = make_settings(tmp_path / "data", database_url=str(db.engine.url.render_as_string(False)))
    options = MilvusOptions(lite=True, prefix="deposed")
    indexer = Indexer(settings, db, open_blob_store(settings), milvus_client, options)
    ids, _ = add_rows(db, 5, seed=11)
    indexer.run_round()
    more, _ = add_rows(db, 5, seed=12)
    with pytest.raises(indexer_module.LostLeadershipError):
        indexer.run_round(held=lambda: False)
    index = MilvusIndex(milvus_client, 16, VERSION, milvus=options)
    assert sorted(contents(index, ids + more)) == ids
    with db.session() as session:
        assert cursors.cursor_of(session, VERSION).change < repository.last_change(session)  # type: ignore[union-attr]
    index.drop()


def test_a_leader_that_takes_over_removes_what_a_deposed_one_brought_back(
    db: Database, tmp_path: Path, milvus_client: Any
) -> None:
    """Milvus has no conditional write: the old leader's upsert of a chunk it read before it lost the lock can land
    after the new leader applied that image's deletion. Once the grace period has passed, the new leader removes
    again what was deleted after the point it took over from, and nothing else."""
    settings = make_settings(tmp_path / "data", database_url=str(db.engine.url.render_as_string(False)))
    options, store = MilvusOptions(lite=True, prefix="heal"), open_blob_store(settings)
    old = Indexer(settings, db, store, milvus_client, options)
    kept, _ = add_rows(db, 6, seed=13)
    old.run_round()
    with db.session() as session:
        taken_over_at = cursors.cursor_of(session, VERSION).change  # type: ignore[union-attr]
    added, _ = add_rows(db, 8, seed=14)
    stale = outbox.read_changes(db, VERSION, taken_over_at, lambda image_id, path: None)  # the old leader's read
    assert stale is not None

    new = Indexer(settings, db, store, milvus_client, options, grace_s=2.0)
    new.took_over()
    started = time.monotonic()
    new.run_round()
    delete_rows(db, added[:3] + kept[:1])
    new.run_round()
    index = MilvusIndex(milvus_client, 16, VERSION, milvus=options)
    expected = sorted(kept[1:] + added[3:])
    assert sorted(contents(index, kept + added)) == expected

    for domain, (ids, codes) in stale.added.by_domain.items():  # the old leader's late write lands now
        index.upsert(ids, codes, domain)
    assert sorted(contents(index, kept + added)) == sorted(kept[1:] + added)  # the deleted images are back
    new.run_round()
    if time.monotonic() - started < 2.0:  # not healed before the grace period is over
        assert sorted(contents(index, kept + added)) == sorted(kept[1:] + added)
    time.sleep(max(0.0, started + 2.0 - time.monotonic()))
    new.run_round()
    assert sorted(contents(index, kept + added)) == expected and index.domains() == {"d": len(expected)}
    index.drop()


def test_the_indexer_thread_heals_each_time_it_takes_over(db: Database, tmp_path: Path) -> None:
    """A candidate that becomes the leader tells its indexer so (once per take-over, not once per round)."""
    settings = make_settings(tmp_path / "data", database_url=db.engine.url.render_as_string(False))
    settings = settings.model_copy(update={"changes_poll_s": 0.02, "indexer_poll_s": 0.02})
    events: list[str] = []

    leadership = Leadership(db)

    class Recorder:
        def took_over(self) -> None:
            events.append("took over")

        def run_round(self, held: Any) -> int:
            events.append("round")
            if events.count("round") == 3:
                leadership.release()  # as when the lock's connection is cut: the next try takes it again
            return 0

    thread = indexer_module.IndexerThread(
        settings,
        leadership,
        lambda client: Recorder(),  # type: ignore[arg-type,return-value]
        lambda: object(),
        lambda client: None,
    )
    thread.start()
    deadline = time.monotonic() + 10
    while events.count("round") < 5:
        assert time.monotonic() < deadline, events
        time.sleep(0.01)
    thread.stop()
    assert events[0] == "took over" and events.count("took over") == 2 and events.count("round") > 3


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


def test_a_long_build_touches_its_cursor(
    db: Database, tmp_path: Path, milvus_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an activation waiting for the build watches: the row moves while the codes are read."""
    monkeypatch.setattr(indexer_module, "TOUCH_S", 0.0)
    touched: list[str] = []
    monkeypatch.setattr(cursors, "touch", lambda session, version: touched.append(version))
    settings = make_settings(tmp_path / "data", database_url=str(db.engine.url.render_as_string(False)))
    add_rows(db, 5, seed=3)
    Indexer(
        settings, db, open_blob_store(settings), milvus_client, MilvusOptions(lite=True, prefix="touch")
    ).run_round()
    assert touched == [VERSION] * 5
    MilvusIndex(milvus_client, 16, VERSION, milvus=MilvusOptions(lite=True, prefix="touch")).drop()


def test_an_activation_without_an_indexer_fails_clearly_and_retires_its_collection(
    tmp_path: Path, database_url: str | None, api_artefact: Path, second_artefact: Path
) -> None:
    """No process indexes (Milvus Lite, and no metah serve): the job fails with ``indexer_unavailable`` after
    ``job_stale_after_s`` without progress, the model stays as it was, and nothing keeps the asked-for collection."""
    data = tmp_path / "data"
    settings = make_settings(
        data,
        database_url=database_url or f"sqlite:///{data / 'metah.db'}",
        index_backend="milvus",
        milvus_uri=str(data / "milvus.db"),
        job_stale_after_s=0.5,
    )
    data.mkdir()
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    worker = Worker(settings, db, handlers())
    old = register_artefact(db, worker.store, api_artefact, activate=True).version
    new = register_artefact(db, worker.store, second_artefact, activate=False).version
    job_id = activation.enqueue_activation(db, new)
    assert worker.run_once()
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == queue.FAILED
        assert job.errors[0]["code"] == "indexer_unavailable" and "metah worker" in job.errors[0]["message"]
        assert repository.active_model(session).version == old  # type: ignore[union-attr]
        assert cursors.cursor_of(session, new).state == cursors.RETIRED  # type: ignore[union-attr]
    db.close()


def test_a_candidate_waits_for_an_unreachable_milvus_and_stops_promptly(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker's indexer thread when Milvus does not answer: it logs and tries again; the worker is not taken down
    with it, and it stops within its connect timeout."""
    url = db.engine.url.render_as_string(False)
    uri = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(tmp_path / "data", database_url=url, index_backend="milvus", milvus_uri=uri)
    settings = settings.model_copy(update={"changes_poll_s": 0.1})
    thread = start_indexer(settings, db, open_blob_store(settings))
    deadline = time.monotonic() + 20
    while "indexer round failed" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    started = time.monotonic()
    thread.stop()
    assert time.monotonic() - started < indexer_module.CONNECT_TIMEOUT_S + 2
    with db.session() as session:
        assert cursors.all_cursors(session) == {}  # it never led: nothing was asked for


def test_retired_collections_but_the_newest_are_dropped(db: Database, tmp_path: Path, milvus_client: Any) -> None:
    """Two models retired before the active one: the older one's collection is dropped and its row forgotten, the
    newer one (the previous model: the rollback target) is kept."""
    options = MilvusOptions(lite=True, prefix="retired")
    with db.session() as session:
        for version, minute in (("old1", 1), ("old2", 2)):
            repository.add_model(session, version=version, artefact_path="none.pt", bits=16, metrics={}, meta={})
            session.add(
                IndexCursor(
                    model_version=version,
                    state=cursors.RETIRED,
                    change=0,
                    write_ts=0,
                    updated_at=datetime(2026, 12, 1, 0, minute, tzinfo=UTC),
                )
            )
        session.commit()
    for version in ("old1", "old2"):
        MilvusIndex(milvus_client, 16, version, milvus=options)
    settings = make_settings(tmp_path / "data", database_url=db.engine.url.render_as_string(False))
    Indexer(settings, db, open_blob_store(settings), milvus_client, options).run_round()
    assert not milvus_client.has_collection(collection_name("retired", "old1"))
    assert milvus_client.has_collection(collection_name("retired", "old2"))
    with db.session() as session:
        states = {version: cursor.state for version, cursor in cursors.all_cursors(session).items()}
    assert states == {"old2": cursors.RETIRED, VERSION: cursors.READY}
    for version in ("old2", VERSION):
        MilvusIndex(milvus_client, 16, version, milvus=options).drop()
