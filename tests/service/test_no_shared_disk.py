"""Issue 13's "no shared disk" proof, end to end: two API replicas (``metah serve``) and two job workers
(``metah worker``), each on its OWN empty data dir, sharing only PostgreSQL, the S3 server (radosgw) and a Milvus
standalone server. An archive ingested through one replica is found through the other; a model is trained and
activated while the worker running the training and the indexer's leader are killed with SIGKILL (replacement
workers start on new empty data dirs; the training resumes from the checkpoint the killed worker stored in the
bucket), uploads going on through both replicas meanwhile; images are deleted.
Then: every acknowledged image is found through both replicas, no deleted one is; each content hash is stored
once; every row's blob is in the bucket; the database, the active model's Milvus collection and both replicas
count the same images; and no data dir holds an image, a model or an archive.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from sqlalchemy import select

from index.milvus import collection_name
from service import cursors
from service.blobs import sweep
from service.db import Database
from service.jobs.queue import FINISHED
from service.migrate import upgrade
from service.models import Image, Job
from service.registry import register_artefact
from service.storage import IMAGES, blob_key
from service.storage_s3 import S3BlobStore
from tests.conftest import DigitFolders
from tests.milvus import MilvusServer
from tests.s3server import S3Server, fresh_bucket
from tests.service.conftest import (
    API_KEY,
    ServeRun,
    free_port,
    fresh_postgres_database,
    metah_environment,
    post_image,
    running_metah_serve,
    search,
    wait_for,
)
from tests.service.test_api_jobs import image_folder, submitted, wait_job, zip_of
from tests.service.test_api_s3 import stored_files, wait_ready
from tests.service.test_milvus_server import leader, metah_workers, milvus, milvus_client_of  # noqa: F401

pytestmark = pytest.mark.slow

PNGs = list[tuple[bytes, str]]
Worker = tuple[Any, IO[str]]
PREFIX = "scale"
# Fast polling; a worker's job is queued again after 10 s of silence (SIGKILL), twice as long after a second.
FAST = {
    "WORKER_POLL_S": "0.2",
    "CHANGES_POLL_S": "0.2",
    "INGEST_BATCH_SIZE": "8",
    "JOB_HEARTBEAT_S": "0.5",
    "JOB_STALE_AFTER_S": "10",
    "LOG_FORMAT": "text",
}
TRAIN_ITERATIONS = 40
JOB_TIMEOUT_S = 300


class Stack:
    """The shared services' settings, and the processes started on them, each with its own empty data dir."""

    def __init__(self, tmp_path: Path, database_url: str, bucket: str, milvus_uri: str, stack: ExitStack) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.milvus_uri = milvus_uri
        self.shared = {"BLOB_URL": f"s3://{bucket}/{PREFIX}", **FAST}
        self.stack = stack
        self.data_dirs: list[Path] = []
        self.workers: list[Worker] = []
        self.killed: list[Path] = []  # the data dirs of the workers killed
        self._dirs: dict[int, Path] = {}  # a worker's pid → its data dir

    def data_dir(self, name: str) -> Path:
        path = self.tmp_path / name
        path.mkdir()
        self.data_dirs.append(path)
        return path

    def start_worker(self) -> Worker:
        path = self.data_dir(f"worker-{len(self.workers)}")
        workers = metah_workers(1, path, self.database_url, self.milvus_uri, **self.shared)
        (worker,) = self.stack.enter_context(workers)
        self.workers.append(worker)
        self._dirs[worker[0].pid] = path
        return worker

    def start_replica(self, name: str) -> ServeRun:
        port = free_port()
        env = metah_environment(
            DATA_DIR=str(self.data_dir(name)),
            DATABASE_URL=self.database_url,
            INDEX_BACKEND="milvus",
            MILVUS_URI=self.milvus_uri,
            PORT=str(port),
            API_KEY=API_KEY,
            WORKERS="0",  # the only workers are the test's own
            **self.shared,
        )
        return self.stack.enter_context(running_metah_serve(env, port))

    def kill(self, worker: Worker) -> None:
        process, _ = worker
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        self.killed.append(self.data_dir_of(worker))

    def data_dir_of(self, worker: Worker) -> Path:
        return self._dirs[worker[0].pid]

    def logs(self) -> str:
        """Every worker's log so far."""
        text = []
        for _, log in self.workers:
            log.seek(0)
            text.append(log.read())
        return "\n".join(text)

    def leader(self) -> Worker:
        """The live worker that leads the indexer."""
        process = leader(self.workers)
        return next(worker for worker in self.workers if worker[0] is process)

    def runner_of(self, job_id: int, kind: str, timeout_s: float = 60) -> Worker:
        """The live worker whose log says it started job ``job_id``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for worker in self.workers:
                process, log = worker
                log.seek(0)
                if process.poll() is None and f"job {job_id} ({kind}) started" in log.read():
                    return worker
            assert time.monotonic() < deadline, f"no live worker runs job {job_id}"
            time.sleep(0.05)


def client_of(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"X-API-Key": API_KEY}, timeout=60)


def found(client: httpx.Client, data: bytes, image_id: int, domain: str) -> bool:
    """Whether a search with these bytes returns ``image_id`` at distance 0 (codes repeat: every hit at 0)."""
    response = search(client, data, k=1000, max_distance=0, domain=domain)
    assert response.status_code == 200, response.text
    return image_id in {hit["id"] for hit in response.json()["hits"]}


class Uploads:
    """Uploads images one at a time through the replicas in turn, in a thread; records what each answered."""

    def __init__(self, base_urls: list[str], pngs: PNGs) -> None:
        self.base_urls = base_urls
        self.pngs = pngs
        self.answers: list[tuple[int, dict[str, Any], bytes]] = []
        self.thread = threading.Thread(target=self._run, name="uploads", daemon=True)

    def _run(self) -> None:
        clients = [client_of(url) for url in self.base_urls]
        try:
            for i, (data, label) in enumerate(self.pngs):
                response = post_image(clients[i % len(clients)], data, label=label, domain="uploads")
                self.answers.append((response.status_code, response.json(), data))
                time.sleep(0.2)
        finally:
            for client in clients:
                client.close()

    def start(self) -> Uploads:
        self.thread.start()
        return self

    def join(self) -> list[tuple[int, dict[str, Any], bytes]]:
        self.thread.join(timeout=JOB_TIMEOUT_S)
        assert not self.thread.is_alive(), "the uploads did not end"
        return self.answers


def same_bytes_through_both(a: httpx.Client, b: httpx.Client, data: bytes) -> list[httpx.Response]:
    """The same upload through both replicas at once."""
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(2)

    def upload(client: httpx.Client) -> None:
        with client_of(str(client.base_url)) as own:
            barrier.wait()
            answers.append(post_image(own, data, domain="twice"))

    threads = [threading.Thread(target=upload, args=(client,)) for client in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def training_started(job: dict[str, Any]) -> bool:
    return bool(job["progress"]["done"] > 0 or job["status"] in FINISHED)


def counts(client: httpx.Client, expected: int) -> bool:
    return bool(client.get("/readyz").json()["indexed"] == expected)


def image_rows(db: Database) -> list[tuple[int, str, str, str, int]]:
    query = select(Image.id, Image.sha256, Image.domain, Image.stored_path, Image.size_bytes).order_by(Image.id)
    with db.session() as session:
        return [(int(i), str(s), str(d), str(p), int(n)) for i, s, d, p, n in session.execute(query)]


def milvus_ids(server: MilvusServer, version: str) -> list[int]:
    rows = milvus_client_of(server).query(
        collection_name("metah", version),
        filter="id >= 0",
        output_fields=["id"],
        limit=16_384,
        consistency_level="Strong",
    )
    return sorted(int(row["id"]) for row in rows)


def bucket_image_keys(store: S3BlobStore) -> list[str]:
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=f"{PREFIX}/{IMAGES}/")
    return sorted(item["Key"].removeprefix(f"{PREFIX}/") for page in pages for item in page.get("Contents", []))


def local_files(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file())


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def test_two_replicas_and_two_workers_without_a_shared_disk(
    tmp_path: Path,
    api_artefact: Path,
    digits: DigitFolders,
    digit_pngs: PNGs,
    s3_environ: S3Server,
    milvus: MilvusServer,  # noqa: F811 - the fixture
    postgres_url: str,
) -> None:
    bucket = fresh_bucket()
    store = S3BlobStore(bucket, PREFIX)  # the test's own view of the bucket
    assert store.create_if_missing()
    upgrade(postgres_url)
    db = Database(postgres_url)
    first_version = register_artefact(db, store, api_artefact, activate=True).version
    usps = digit_pngs[:40]
    mnist = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted(digits.source.rglob("*.png"))[::10]]
    acknowledged: dict[int, tuple[bytes, str]] = {}  # image id → (bytes, domain)

    with ExitStack() as stack:
        services = Stack(tmp_path, postgres_url, bucket, milvus.uri, stack)
        services.start_worker()
        services.start_worker()
        replica_a, replica_b = services.start_replica("api-a"), services.start_replica("api-b")
        a, b = replica_a.client, replica_b.client
        assert a.get("/readyz").json()["model_version"] == b.get("/readyz").json()["model_version"] == first_version

        # An archive through A, then every image of it through B (read-your-writes across replicas).
        for archive, domain in ((zip_of(image_folder(usps, len(usps))), "usps"), (zip_of(mnist), "mnist")):
            job = wait_job(a, submitted(a, archive, domain=domain), timeout_s=JOB_TIMEOUT_S)
            assert job["status"] == "succeeded" and job["result"]["failed"] == 0, job
        by_hash = {hashlib.sha256(data).hexdigest(): data for data, _ in usps}
        by_hash |= {hashlib.sha256(data).hexdigest(): data for _, data in mnist}
        listed = b.get("/v1/images", params={"limit": 1000}).json()["items"]
        assert len(listed) == len(usps) + len({data for _, data in mnist})
        acknowledged |= {item["id"]: (by_hash[item["sha256"]], item["domain"]) for item in listed}
        for image_id, (data, domain) in acknowledged.items():
            assert found(b, data, image_id, domain), image_id

        # The same bytes through both replicas at once: one row, and whichever answer, found through both.
        for data, _ in digit_pngs[40:43]:
            answers = same_bytes_through_both(a, b, data)
            assert sorted(r.status_code for r in answers) == [200, 201], [r.text for r in answers]
            assert answers[0].json()["id"] == answers[1].json()["id"]
            image_id = answers[0].json()["id"]
            acknowledged[image_id] = (data, "twice")
            assert found(a, data, image_id, "twice") and found(b, data, image_id, "twice")

        # Training through B; SIGKILL the worker running it and the indexer's leader; uploads meanwhile.
        body = {
            "source_domain": "mnist",
            "target_domain": "usps",
            "bits": 32,
            "iterations": TRAIN_ITERATIONS,
            "activate": True,
        }
        response = b.post("/v1/training-jobs", json=body)
        assert response.status_code == 202, response.text
        train_id = response.json()["job_id"]
        uploads = Uploads([str(a.base_url), str(b.base_url)], digit_pngs[43:63]).start()
        training = wait_job(b, train_id, until=training_started, timeout_s=JOB_TIMEOUT_S)
        assert training["status"] == "running", training
        wait_for(lambda: any(store.checkpoint_keys(train_id)), JOB_TIMEOUT_S, "no checkpoint in the bucket")
        runner, indexer = services.runner_of(train_id, "train"), services.leader()
        runner_dir = services.data_dir_of(runner)
        services.kill(runner)
        if indexer is not runner:
            services.kill(indexer)
        services.start_worker()
        trained = wait_job(b, train_id, timeout_s=JOB_TIMEOUT_S)
        assert trained["status"] == "succeeded", trained
        with db.session() as session:
            assert session.get(Job, train_id).attempts == 2  # type: ignore[union-attr]  # killed once, mid-job
        assert trained["result"]["resumed_from_step"] > 0, trained  # from the checkpoint in the bucket
        version = trained["result"]["version"]
        activation_id = trained["result"]["activation_job_id"]

        # The activation asks the indexer for the new model's collection and waits for it: SIGKILL the leader
        # then (while it builds the collection, unless it was quicker than this test looks).
        def asked() -> bool:
            with db.session() as session:
                return cursors.cursor_of(session, version) is not None

        wait_for(asked, JOB_TIMEOUT_S, "the activation did not ask for the new collection", poll_s=0.02)
        services.kill(services.leader())
        services.start_worker()
        activated = wait_job(b, activation_id, timeout_s=JOB_TIMEOUT_S)
        assert activated["status"] == "succeeded", activated
        for client in (a, b):
            assert wait_ready(client, version)["bits"] == 32

        for status, image, data in uploads.join():
            assert status == 201, image
            acknowledged[image["id"]] = (data, "uploads")
        for image_id, (data, domain) in acknowledged.items():
            assert found(a, data, image_id, domain) and found(b, data, image_id, domain), image_id

        # Deletes through A are never returned through B.
        deleted = [image_id for image_id, (_, domain) in acknowledged.items() if domain in ("usps", "uploads")][::7]
        for image_id in deleted:
            assert a.delete(f"/v1/images/{image_id}").status_code == 204
        for image_id in deleted:
            data, domain = acknowledged.pop(image_id)
            assert not found(b, data, image_id, domain), image_id

        # Counts agree everywhere; every acknowledged image is found through both replicas.
        rows = image_rows(db)
        assert [row[0] for row in rows] == sorted(acknowledged)
        assert milvus_ids(milvus, version) == sorted(acknowledged)
        domains = dict(Counter(row[2] for row in rows))
        for client in (a, b):  # /readyz counts at Milvus's Bounded consistency: seconds behind at most
            wait_for(partial(counts, client, len(rows)), 60, "a replica's count")
            listed = client.get("/v1/domains").json()["domains"]
            assert {item["name"]: item["count"] for item in listed} == domains
            for image_id, (data, domain) in acknowledged.items():
                assert found(client, data, image_id, domain), image_id
        worker_logs = services.logs()
    assert "Traceback" not in worker_logs, worker_logs
    for run in (replica_a, replica_b):
        assert "Traceback" not in run.output, run.output

    # Nothing stored twice, no row without its blob (the deleted images' blobs go with the sweep).
    assert len({(row[1], row[2]) for row in rows}) == len(rows)
    time.sleep(0.01)
    sweep(db, store, 0.001)
    assert bucket_image_keys(store) == sorted({blob_key(row[1]) for row in rows})
    assert list(store.checkpoint_keys()) == []  # removed once the training job succeeded
    for _, _, _, stored_path, size in rows:
        head = store.client.head_object(Bucket=bucket, Key=f"{PREFIX}/{stored_path}")
        assert head["ContentLength"] == size
    db.close()

    # No data dir holds an image, a model or an archive. The worker killed while training leaves its job's run
    # folder (the images it exported, its checkpoint): local scratch that nothing reads from another machine,
    # removed when a training job next starts on that data dir.
    assert runner_dir in services.killed
    for path in services.data_dirs:
        assert stored_files(path) == [], path
        if path == runner_dir:
            assert local_files(path) and all(f.startswith(f"training/job-{train_id}/") for f in local_files(path))
        else:
            assert local_files(path) == [], path
