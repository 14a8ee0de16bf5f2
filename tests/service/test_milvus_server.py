"""The Milvus backend on a real Milvus 2.3.5 standalone server (the slow tier; SQLite and PostgreSQL): the
indexer runs in ``metah worker`` processes, the API searches with the timestamp the indexer stored
(read-your-writes across processes), the alias names the active collection, and killing the leading indexer
with SIGKILL in the middle of a stream of writes loses nothing: another worker takes over where the stored cursor
says, and the collection ends up holding exactly the database's codes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from index.milvus import collection_name
from service import cursors, repository
from service.db import Database
from service.migrate import upgrade
from service.registry import register_artefact
from service.storage import open_blob_store
from tests.milvus import MilvusServer
from tests.service.conftest import (
    REPO,
    StartServer,
    fresh_postgres_database,
    make_settings,
    metah_environment,
    post_image,
    search,
)
from tests.service.test_api_jobs import wait_job
from tests.service.test_indexer import add_rows, delete_rows
from tests.service.test_milvus_backend import PNGs, hits_of, oracle, wait_ready

pytestmark = pytest.mark.slow

LEADS = re.compile(r"this process \(pid (\d+)\) leads the indexer")


@pytest.fixture
def milvus(milvus_server: MilvusServer, milvus_server_client: Any) -> MilvusServer:
    """The session's server, emptied: each test starts without collections or aliases."""
    for name in milvus_server_client.list_collections():
        for alias in milvus_server_client.list_aliases(name).get("aliases", []):
            milvus_server_client.drop_alias(alias)
        milvus_server_client.drop_collection(name)
    return milvus_server


@contextmanager
def metah_workers(
    count: int, data_dir: Path, database_url: str, uri: str, **settings: str
) -> Iterator[list[tuple[Any, IO[str]]]]:
    """``count`` real ``metah worker`` processes on the Milvus backend, each logging to a file of its own;
    ``settings``: more ``METAH_*`` variables (without the prefix), or other values for these."""
    env = metah_environment(
        **{
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": database_url,
            "INDEX_BACKEND": "milvus",
            "MILVUS_URI": uri,
            "CHANGES_POLL_S": "0.2",
            "WORKER_POLL_S": "0.2",
            "LOG_FORMAT": "text",
            **settings,
        }
    )
    started = []
    try:
        for _ in range(count):
            log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed below
            process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
            started.append((process, log))
        yield started
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, log in started:
            process.wait(timeout=60)
            log.close()


def leader(workers: list[tuple[Any, IO[str]]], timeout_s: float = 60) -> Any:
    """The live worker whose log says it leads the indexer (the last one to say so)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for process, log in workers:
            log.seek(0)
            pids = LEADS.findall(log.read())
            if process.poll() is None and pids and int(pids[-1]) == process.pid:
                return process
        assert time.monotonic() < deadline, "no worker leads the indexer"
        time.sleep(0.1)


def database(tmp_path: Path, database_url: str | None) -> str:
    return database_url or f"sqlite:///{tmp_path / 'data' / 'metah.db'}"


def test_the_service_on_a_milvus_server(
    start_server: StartServer, tmp_path: Path, database_url: str | None, milvus: MilvusServer, digit_pngs: PNGs
) -> None:
    url = database(tmp_path, database_url)
    live = start_server(index_backend="milvus", milvus_uri=milvus.uri, changes_poll_s=0.2)
    with metah_workers(1, tmp_path / "data", url, milvus.uri):
        client = live.client()
        wait_ready(client, timeout_s=90)
        ids = []
        for data, label in digit_pngs[:16]:
            created = post_image(client, data, label=label)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
            assert client.get("/readyz").json()["indexed"] == len(ids)  # counted at the indexer's last write
            found = search(client, data, k=20, max_distance=0).json()["hits"]  # another process indexed it
            assert created.json()["id"] in {hit["id"] for hit in found}
        for data, _ in digit_pngs[16:20]:
            response = search(client, data, k=10)
            assert hits_of(response) == oracle(live, response.json()["query"]["code_hex"], 10)
        for image_id in ids[:4]:
            assert client.delete(f"/v1/images/{image_id}").status_code == 204
        for data, _ in digit_pngs[:16]:
            assert not set(ids[:4]) & {hit for hit, _ in hits_of(search(client, data, k=16))}
        version = client.get("/readyz").json()["model_version"]
        alias = milvus_client_of(milvus).describe_alias("metah_active")
        assert alias["collection_name"] == collection_name("metah", version)


def milvus_client_of(server: MilvusServer) -> Any:
    from pymilvus import MilvusClient

    return MilvusClient(server.uri)


def test_killing_the_indexer_mid_stream_loses_nothing(
    tmp_path: Path, database_url: str | None, milvus: MilvusServer, api_artefact: Path
) -> None:
    settings = make_settings(tmp_path / "data", database_url=database(tmp_path, database_url))
    settings.data_dir.mkdir()
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    version = register_artefact(db, open_blob_store(settings), api_artefact, activate=True).version
    added: list[int] = []
    deleted: list[int] = []
    writing = threading.Event()

    def stream() -> None:  # 60 commits of 100 images (with their codes), a few deleted every time
        for batch in range(60):
            ids, _ = add_rows(db, 100, seed=batch, version=version)
            added.extend(ids)
            delete_rows(db, ids[:3])
            deleted.extend(ids[:3])
            writing.set()
            time.sleep(0.1)

    with metah_workers(2, settings.data_dir, settings.sqlalchemy_url, milvus.uri) as workers:
        first = leader(workers)
        assert cursors.wait_indexed(db, 0, 60), "the collection was not built"
        writer = threading.Thread(target=stream)
        writer.start()
        deadline = time.monotonic() + 60
        while True:  # the leader has applied part of the stream: kill it there
            with db.session() as session:
                cursor = cursors.cursor_of(session, version)
                last = repository.last_change(session)
            if cursor is not None and cursor.state == cursors.READY and 0 < cursor.change < last and writer.is_alive():
                break
            assert time.monotonic() < deadline and writer.is_alive(), "the stream ended before the leader applied any"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        writer.join()
        second = leader(workers)
        assert second.pid != first.pid
        with db.session() as session:
            last = repository.last_change(session)
        assert cursors.wait_indexed(db, last, 60), "the new leader did not catch up"

    with db.session() as session:
        expected = {image_id: code for image_id, code, _ in repository.iter_codes(session, version)}
    client = milvus_client_of(milvus)
    rows = client.query(
        collection_name("metah", version),
        filter="id >= 0",
        output_fields=["id", "code"],
        limit=16_384,
        consistency_level="Strong",
    )
    got = {int(row["id"]): bytes(row["code"][0] if isinstance(row["code"], list) else row["code"]) for row in rows}
    assert len(added) == 6000 and len(expected) == 6000 - len(deleted)
    assert got == expected  # every acknowledged image once, no deleted one, the database's codes
    db.close()
    np.testing.assert_equal(sorted(got), sorted(set(added) - set(deleted)))


def test_activation_on_a_milvus_server_moves_the_alias(
    start_server: StartServer,
    tmp_path: Path,
    database_url: str | None,
    milvus: MilvusServer,
    digit_pngs: PNGs,
    second_artefact: Path,
) -> None:
    url = database(tmp_path, database_url)
    live = start_server(index_backend="milvus", milvus_uri=milvus.uri, changes_poll_s=0.2)
    with metah_workers(1, tmp_path / "data", url, milvus.uri):  # it runs the activation job and the indexer
        client = live.client()
        old = wait_ready(client, timeout_s=90)["model_version"]
        ids = [post_image(client, data, label=label).json()["id"] for data, label in digit_pngs[:10]]
        db = Database(url)
        version = register_artefact(db, open_blob_store(live.settings), second_artefact, activate=False).version
        job = wait_job(client, client.post(f"/v1/models/{version}/activate").json()["job_id"], timeout_s=120)
        assert job["status"] == "succeeded", job
        deadline = time.monotonic() + 30
        while (ready := wait_ready(client))["model_version"] != version:
            assert time.monotonic() < deadline, ready
            time.sleep(0.05)
        assert ready["bits"] == 32
        milvus_client = milvus_client_of(milvus)
        while milvus_client.describe_alias("metah_active")["collection_name"] != collection_name("metah", version):
            assert time.monotonic() < deadline, "the alias did not move"
            time.sleep(0.05)
        response = search(client, digit_pngs[2][0], k=10)
        assert response.json()["model_version"] == version
        assert hits_of(response) == oracle(live, response.json()["query"]["code_hex"], 10)
        assert {hit for hit, _ in hits_of(search(client, digit_pngs[2][0], k=10))} <= set(ids)
        with db.session() as session:
            states = {c.model_version: c.state for c in cursors.all_cursors(session).values()}
        assert states == {version: cursors.READY, old: cursors.RETIRED}
        assert milvus_client.has_collection(collection_name("metah", old))  # kept: replicas still on it finish
        db.close()


def test_an_already_stored_answer_waits_for_the_indexer_like_a_created_one(
    start_server: StartServer, tmp_path: Path, database_url: str | None, milvus: MilvusServer, digit_pngs: PNGs
) -> None:
    """Two replicas: A acknowledges an upload after 0.2 s, before the indexer (a round every 3 s) applied it; the
    same bytes through B are a 200, which waits for the indexer as a 201 does, so B's next search finds them."""
    url = database(tmp_path, database_url)
    options = {"index_backend": "milvus", "milvus_uri": milvus.uri, "changes_poll_s": 0.2, "database_url": url}
    quick = start_server(index_wait_s=0.2, **options)
    patient = start_server(index_wait_s=30.0, **options)
    with metah_workers(1, tmp_path / "data", url, milvus.uri, INDEXER_POLL_S="3"):
        a, b = quick.client(), patient.client()
        wait_ready(a, timeout_s=90)
        wait_ready(b, timeout_s=90)
        for data, _ in digit_pngs[:3]:
            created = post_image(a, data)
            assert created.status_code == 201, created.text
            again = post_image(b, data)
            assert again.status_code == 200 and again.json()["id"] == created.json()["id"], again.text
            hits = search(b, data, k=100, max_distance=0).json()["hits"]
            assert created.json()["id"] in {hit["id"] for hit in hits}


def test_two_deployments_share_a_server_under_their_own_prefixes(
    start_server: StartServer, tmp_path: Path, database_url: str | None, milvus: MilvusServer, digit_pngs: PNGs
) -> None:
    """METAH_MILVUS_PREFIX: two deployments (own database, own data dir, same model, same image ids 1, 2, …) on
    one Milvus server keep their codes apart; under one prefix the second's writes would replace the first's."""
    with ExitStack() as stack:
        clients = {}
        for prefix, images in (("shop_a", digit_pngs[:4]), ("shop_b", digit_pngs[4:8])):
            data_dir = tmp_path / prefix
            data_dir.mkdir()
            url = f"sqlite:///{data_dir / 'metah.db'}"
            if database_url is not None:  # a second PostgreSQL database: the deployments share only Milvus
                url = stack.enter_context(fresh_postgres_database())
            live = start_server(
                data_dir,
                database_url=url,
                index_backend="milvus",
                milvus_uri=milvus.uri,
                milvus_prefix=prefix,
                changes_poll_s=0.2,
            )
            stack.enter_context(metah_workers(1, data_dir, url, milvus.uri, MILVUS_PREFIX=prefix))
            client = clients[prefix] = live.client()
            version = wait_ready(client, timeout_s=90)["model_version"]
            assert [post_image(client, data).json()["id"] for data, _ in images] == [1, 2, 3, 4]
        alias = milvus_client_of(milvus).describe_alias
        for prefix, images in (("shop_a", digit_pngs[:4]), ("shop_b", digit_pngs[4:8])):
            for image_id, (data, _) in enumerate(images, start=1):
                hits = search(clients[prefix], data, k=10, max_distance=0).json()["hits"]
                assert image_id in {hit["id"] for hit in hits}, (prefix, image_id, hits)
            deadline = time.monotonic() + 60  # /readyz counts at Milvus's Bounded consistency: it may lag
            while wait_ready(clients[prefix])["indexed"] != 4:
                assert time.monotonic() < deadline, wait_ready(clients[prefix])
                time.sleep(0.2)
            assert alias(f"{prefix}_active")["collection_name"] == collection_name(prefix, version)
