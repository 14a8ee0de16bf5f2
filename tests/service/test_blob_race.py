"""The cross-process blob race (issue 13): an API deleting images and a ``metah worker`` ingesting the same bytes
at the same time (the API deleting the worker's rows too), with a sweep removing unreferenced blobs from a third
place, on the local store and on S3,
on SQLite and on PostgreSQL. Afterwards no row lacks its blob, and once every row is deleted the sweep leaves
no image blob behind.

Before :mod:`service.blobs` the API removed a blob when it deleted the blob's last row; a worker that had just
found the blob stored (another domain's row still pointed at it) then committed a row pointing at nothing.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from service.blobs import sweep
from service.db import Database
from service.models import Image, LooseBlob
from service.storage import IMAGES, BlobStore, blob_key, open_blob_store, sha256_hex
from service.storage_s3 import S3BlobStore
from tests.s3server import fresh_bucket
from tests.service.conftest import REPO, LiveServer, StartServer, metah_environment, post_image
from tests.service.test_api_jobs import image_folder, submitted, wait_job, zip_of

GRACE_S = 1.0  # short, so that blobs are swept while the race runs
RACE_S = 20.0
IMAGES_RACED = 24


@contextmanager
def metah_worker(server: LiveServer) -> Iterator[list[str]]:
    """A ``metah worker`` process on the server's database and blob store, sweeping often."""
    settings = server.settings
    env = metah_environment(
        DATA_DIR=str(settings.data_dir),
        DATABASE_URL=settings.sqlalchemy_url,
        WORKER_POLL_S="0.05",
        BLOB_GRACE_S=str(GRACE_S),
        BLOB_SWEEP_S="0.3",
        **({"BLOB_URL": settings.blob_url} if settings.blob_url else {}),
    )
    output: list[str] = []
    with tempfile.TemporaryFile(mode="w+") as log:
        command = [sys.executable, "-m", "service.cli", "worker", "--kind", "ingest"]
        worker = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            yield output
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            log.seek(0)
            output.append(log.read())


def churn(client: httpx.Client, pngs: list[bytes], stop: threading.Event, errors: list[str]) -> None:
    """Until ``stop``: upload a random half of the images into domain ``b``, then delete every image (the
    worker's too), then wait up to half the grace period."""
    rng = random.Random(1)
    while not stop.is_set():
        for data in rng.sample(pngs, len(pngs) // 2):
            response = post_image(client, data, domain="b")
            if response.status_code not in (200, 201):
                errors.append(f"upload {response.status_code}: {response.text}")
                return
        for item in client.get("/v1/images", params={"limit": 1000}).json()["items"]:
            if (status := client.delete(f"/v1/images/{item['id']}").status_code) not in (204, 404):
                errors.append(f"delete {status}")
                return
        stop.wait(rng.uniform(0, GRACE_S / 2))


def sweeping(db: Database, store: BlobStore, stop: threading.Event, removed: list[int], errors: list[str]) -> None:
    while not stop.is_set():
        try:
            removed.append(sweep(db, store, GRACE_S))
        except Exception as exc:  # reported to the test
            errors.append(repr(exc))
            return
        stop.wait(0.1)


def rows_without_blob(db: Database, store: BlobStore) -> list[tuple[int, str, str]]:
    """Rows whose blob is missing while the row exists (read again after the blob: ids are never reused, so a
    row deleted meanwhile, whose blob may be gone, does not count)."""
    with db.session() as session:
        rows = session.execute(select(Image.id, Image.domain, Image.stored_path)).all()
    missing = {int(i): (str(domain), str(key)) for i, domain, key in rows if not store.exists(key)}
    with db.session() as session:
        still = set(session.scalars(select(Image.id).where(Image.id.in_(missing))))
    return [(i, *missing[i]) for i in sorted(still)]


@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_deletes_and_a_worker_ingesting_the_same_bytes_never_leave_a_row_without_its_blob(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    start_server: StartServer,
    digit_pngs: list[tuple[bytes, str]],
    store_kind: str,
) -> None:
    overrides: dict[str, object] = {"blob_grace_s": GRACE_S}
    if store_kind == "s3":
        request.getfixturevalue("s3_environ")
        overrides["blob_url"] = f"s3://{fresh_bucket()}/race"
        S3BlobStore.from_url(str(overrides["blob_url"])).create_if_missing()  # what `metah migrate` does
    server = start_server(tmp_path / "data", **overrides)
    store = open_blob_store(server.settings)
    db = Database(server.settings.sqlalchemy_url)
    client = server.client()
    pngs = digit_pngs[:IMAGES_RACED]
    rng = random.Random(2)

    stop, errors, removed = threading.Event(), list[str](), list[int]()
    threads = [
        threading.Thread(target=churn, args=(server.client(), [data for data, _ in pngs], stop, errors)),
        threading.Thread(target=sweeping, args=(db, store, stop, removed, errors)),
    ]
    rounds = 0
    try:
        with metah_worker(server) as worker_log:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + RACE_S
            while time.monotonic() < deadline and not errors:  # each round: a random half of the same bytes
                archive = zip_of(image_folder(rng.sample(pngs, IMAGES_RACED // 2), IMAGES_RACED // 2))
                job = wait_job(client, submitted(client, archive, domain="a"), timeout_s=120)
                assert job["status"] == "succeeded" and job["result"]["failed"] == 0, job
                rounds += 1
                assert rows_without_blob(db, store) == []
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    try:
        assert errors == [], errors
        assert "Traceback" not in worker_log[0], worker_log[0]
        assert rows_without_blob(db, store) == []
        assert rounds >= 2 and sum(removed) > 0, (rounds, removed)  # the sweep did remove blobs meanwhile

        with db.session() as session:
            ids = list(session.scalars(select(Image.id)))
        for image_id in ids:
            assert client.delete(f"/v1/images/{image_id}").status_code == 204
        time.sleep(0.01)
        sweep(db, store, 0.001)
        with db.session() as session:
            assert session.scalars(select(LooseBlob)).all() == []
        assert [data for data, _ in pngs if store.exists(blob_key(sha256_hex(data)))] == []
        if store_kind == "local":
            assert not [p for p in (server.settings.data_dir / IMAGES).rglob("*") if p.is_file()]
    finally:
        db.close()
