"""kill -9 of ``metah serve`` and its worker child in the middle of a bulk ingestion, while single uploads
stream in; after a restart nothing acknowledged is lost, nothing is duplicated, the interrupted job resumes
and the index holds exactly the database's images. Runs on SQLite and on PostgreSQL (``database_url``)."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from service.db import Database
from service.jobs import queue
from service.migrate import upgrade
from service.models import Code, Job
from tests.conftest import DigitFolders
from tests.service.conftest import (
    API_KEY,
    free_port,
    metah_environment,
    post_image,
    running_metah_serve,
    search,
)
from tests.service.test_api_jobs import submitted, wait_job, zip_of
from workbench.processes import children_of

# A retried training job trains again (about a minute of its 120 steps on two busy cores) before it succeeds.
TRAINING_RETRY_S = 240
CRASH_SETTINGS = {
    "WORKER_POLL_S": "0.05",
    "JOB_HEARTBEAT_S": "0.2",
    "JOB_STALE_AFTER_S": "2",
    "CHANGES_POLL_S": "0.2",
    "INGEST_BATCH_SIZE": "4",
}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def kill_serve_and_worker(process: subprocess.Popen[str]) -> None:
    victims = [process.pid, *children_of(process.pid)]
    assert len(victims) == 3, victims  # the API, its worker and its ingest worker
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_state(pid) not in ("gone", "Z") for pid in victims[1:]):
        assert time.monotonic() < deadline, f"the worker survived kill -9: {victims[1:]}"
        time.sleep(0.05)


def digits_in(archive: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        return [name for name in opened.namelist() if name.endswith(".png")]


class Uploader:
    """Single uploads in a thread until stopped; keeps the acknowledged ones (2xx) as ``(id, sha256)``."""

    def __init__(self, base_url: str, images: list[bytes]) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"X-API-Key": API_KEY}, timeout=10)
        self.images = images
        self.acknowledged: list[tuple[int, str]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="uploader", daemon=True)

    def _run(self) -> None:
        for data in self.images:
            if self.done.is_set():
                return
            try:
                response = post_image(self.client, data, domain="usps")
            except httpx.TransportError:
                return  # the server is gone: this upload was never acknowledged
            if response.is_success:
                self.acknowledged.append((response.json()["id"], hashlib.sha256(data).hexdigest()))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)
        self.client.close()


def serve_environment(data_dir: Path, model: Path, port: int, database_url: str | None) -> dict[str, str]:
    """The environment of a crash test's ``metah serve``: SQLite in ``data_dir``, or ``database_url`` (migrated
    here: against PostgreSQL, migrations are an explicit step)."""
    values = {"DATA_DIR": str(data_dir), "MODEL": str(model), "PORT": str(port), "API_KEY": API_KEY}
    if database_url is not None:
        upgrade(database_url)
        values["DATABASE_URL"] = database_url
    return metah_environment(**values, **CRASH_SETTINGS)


def job_row(db: Database, job_id: int) -> Job:
    """The job's row as the database holds it (``attempts`` is not part of the API)."""
    with db.session() as session:
        job = session.get(Job, job_id)
    assert job is not None
    return job


def codes_of(db: Database, version: str) -> int:
    """How many images have a committed code of model ``version``."""
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Code).where(Code.model_version == version)) or 0)


def all_images(client: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page = client.get("/v1/images", params={"limit": 500, **({"after": after} if after else {})}).json()
        items += page["items"]
        if page["next"] is None:
            return items
        after = page["next"]


def test_kill_9_during_bulk_ingestion_loses_and_duplicates_nothing(
    tmp_path: Path,
    api_artefact: Path,
    digits: DigitFolders,
    digit_pngs: list[tuple[bytes, str]],
    database_url: str | None,
) -> None:
    archive_files = sorted(digits.source.rglob("*.png"))
    archive = zip_of([(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in archive_files])
    archive_hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in archive_files}
    port = free_port()
    env = serve_environment(tmp_path / "var", api_artefact, port, database_url)

    with running_metah_serve(env, port) as run:
        job_id = submitted(run.client, archive, domain="mnist")
        uploader = Uploader(str(run.client.base_url), [data for data, _ in digit_pngs])
        uploader.thread.start()
        job = wait_job(run.client, job_id, until=lambda j: j["progress"]["done"] >= 40 or j["status"] in queue.FINISHED)
        assert job["status"] == "running" and job["progress"]["done"] < len(archive_files), job
        kill_serve_and_worker(run.process)
        uploader.stop()
    assert uploader.acknowledged, "no single upload was acknowledged before the crash"

    with running_metah_serve(env, port) as run:
        job = wait_job(run.client, job_id)
        assert job["status"] == "succeeded", job
        assert job["progress"]["done"] == job["progress"]["total"] == len(archive_files)
        images = all_images(run.client)
        pairs = [(image["domain"], image["sha256"]) for image in images]
        assert len(pairs) == len(set(pairs)), "an image was stored twice"
        assert {sha for domain, sha in pairs if domain == "mnist"} == archive_hashes
        stored = {image["id"]: image["sha256"] for image in images}
        for image_id, sha in uploader.acknowledged:
            assert stored.get(image_id) == sha, f"acknowledged image {image_id} was lost"
        deadline = time.monotonic() + 10  # the API applies the worker's last writes within changes_poll_s
        while (indexed := run.client.get("/readyz").json()["indexed"]) != len(images):
            assert time.monotonic() < deadline, (indexed, len(images))
            time.sleep(0.1)
        for image_id, _ in uploader.acknowledged[-3:]:
            data = run.client.get(f"/v1/images/{image_id}/content").content
            hits = search(run.client, data, k=50, max_distance=0, domain="usps").json()["hits"]
            assert image_id in {hit["id"] for hit in hits}


def test_kill_9_during_training_then_during_activation(
    tmp_path: Path,
    api_artefact: Path,
    digits: DigitFolders,
    digit_pngs: list[tuple[bytes, str]],
    database_url: str | None,
) -> None:
    """Each interrupted job is queued again when its heartbeat goes silent, runs again (a second attempt) and
    succeeds; the activation is killed provably mid-job (running, part of the images re-encoded and committed)
    and its retry encodes only the rest. The new model then serves every stored image. On SQLite and on
    PostgreSQL (``database_url``)."""
    mnist = zip_of([(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted(digits.source.rglob("*.png"))])
    usps = zip_of([(f"{label}/{i}.png", data) for i, (data, label) in enumerate(digit_pngs)])
    port = free_port()
    env = serve_environment(tmp_path / "var", api_artefact, port, database_url)
    db = Database(database_url or f"sqlite:///{tmp_path / 'var' / 'metah.db'}")
    body = {"source_domain": "mnist", "target_domain": "usps", "bits": 32, "iterations": 120}

    with running_metah_serve(env, port) as run:
        for archive, domain in ((mnist, "mnist"), (usps, "usps")):
            assert wait_job(run.client, submitted(run.client, archive, domain=domain))["status"] == "succeeded"
        total = len(all_images(run.client))
        train_id = run.client.post("/v1/training-jobs", json=body).json()["job_id"]
        job = wait_job(
            run.client,
            train_id,
            until=lambda j: j["progress"]["done"] >= 10 or j["status"] in queue.FINISHED,
        )
        assert job["status"] == "running", job
        kill_serve_and_worker(run.process)

    with running_metah_serve(env, port) as run:
        trained = wait_job(run.client, train_id, timeout_s=TRAINING_RETRY_S)
        assert trained["status"] == "succeeded" and trained["result"]["sources"] == len(digits_in(mnist)), trained
        assert job_row(db, train_id).attempts == 2
        version = trained["result"]["version"]
        activation_id = run.client.post(f"/v1/models/{version}/activate").json()["job_id"]
        wait_job(run.client, activation_id, until=lambda j: j["progress"]["done"] > 0 or j["status"] in queue.FINISHED)
        kill_serve_and_worker(run.process)
    # Killed mid-job: still running in its first attempt, part of the images' codes committed, not all.
    killed = job_row(db, activation_id)
    assert (killed.status, killed.attempts) == (queue.RUNNING, 1), (killed.status, killed.attempts)
    coded = codes_of(db, version)
    assert 0 < coded < total, (coded, total)

    with running_metah_serve(env, port) as run:
        activated = wait_job(run.client, activation_id)
        assert activated["status"] == "succeeded", activated
        assert job_row(db, activation_id).attempts == 2
        assert activated["result"]["encoded"] == total - coded  # the retry resumed where the kill stopped it
        deadline = time.monotonic() + 30
        while (ready := run.client.get("/readyz").json())["model_version"] != version:
            assert time.monotonic() < deadline, ready
            time.sleep(0.1)
        assert ready["bits"] == 32 and ready["indexed"] == total == len(all_images(run.client))
        data = digit_pngs[0][0]
        assert search(run.client, data, max_distance=0, domain="usps").json()["hits"][0]["distance"] == 0
    db.engine.dispose()
