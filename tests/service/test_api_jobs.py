"""Jobs and bulk ingestion: a real server, a real worker (a thread of the worker loop, or the child process
``metah serve`` starts), real SQLite and real digit PNGs packed into zip and tar archives."""

from __future__ import annotations

import io
import signal
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from service.db import Database
from service.jobs import queue
from service.jobs.process import handlers
from service.jobs.worker import JobContext, Worker
from service.models import Job, utc_now
from tests.conftest import DigitFolders
from tests.service.conftest import (
    API_KEY,
    LiveServer,
    StartServer,
    assert_error,
    free_port,
    metah_environment,
    running_metah_serve,
    search,
)

JOB_SETTINGS: dict[str, Any] = {
    "worker_poll_s": 0.05,
    "job_heartbeat_s": 0.2,
    "job_stale_after_s": 2.0,
    "changes_poll_s": 0.2,
    "ingest_batch_size": 16,
    "archive_max_members": 100,
    "archive_max_ratio": 50.0,
}

Entries = list[tuple[str, bytes]]
PNGs = list[tuple[bytes, str]]


def zip_of(entries: Entries, *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of(entries: Entries, *, mode: str = "w:gz", extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info)
    return buffer.getvalue()


def image_folder(pngs: list[tuple[bytes, str]], n: int, root: str = "digits") -> Entries:
    return [(f"{root}/{label}/{i:03d}.png", data) for i, (data, label) in enumerate(pngs[:n])]


def submit(client: httpx.Client, archive: bytes, *, domain: str | None = None, name: str = "a.zip") -> httpx.Response:
    data = {"domain": domain} if domain else {}
    return client.post("/v1/ingest-jobs", files={"archive": (name, archive, "application/octet-stream")}, data=data)


def submitted(client: httpx.Client, archive: bytes, **kwargs: Any) -> int:
    response = submit(client, archive, **kwargs)
    assert response.status_code == 202, response.text
    return int(response.json()["job_id"])


def wait_job(
    client: httpx.Client,
    job_id: int,
    *,
    until: Callable[[dict[str, Any]], bool] | None = None,
    timeout_s: float = 60,
) -> dict[str, Any]:
    done = until or (lambda job: job["status"] in queue.FINISHED)
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if done(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


class WorkerThread:
    """The worker loop in a thread of the test process (the process boundary is tested once, below)."""

    def __init__(self, live: LiveServer, extra: dict[str, Any] | None = None) -> None:
        self.db = Database(live.settings.sqlalchemy_url)
        self.worker = Worker(live.settings, self.db, {**handlers(), **(extra or {})})
        self.thread = threading.Thread(target=self.worker.run_forever, name="job-worker", daemon=True)

    def start(self) -> WorkerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=30)
        self.db.close()


@pytest.fixture
def live(start_server: StartServer) -> LiveServer:
    return start_server(**JOB_SETTINGS)


@pytest.fixture
def jobs_client(live: LiveServer) -> httpx.Client:
    return live.client()


@pytest.fixture
def worker(live: LiveServer) -> Iterator[WorkerThread]:
    thread = WorkerThread(live).start()
    yield thread
    thread.stop()


def count_images(client: httpx.Client, **params: str) -> int:
    return len(client.get("/v1/images", params={"limit": 1000, **params}).json()["items"])


def test_ingest_an_image_folder_zip_then_search_and_resubmit(
    live: LiveServer, jobs_client: httpx.Client, worker: WorkerThread, digit_pngs: list[tuple[bytes, str]]
) -> None:
    entries = image_folder(digit_pngs, 50)
    archive = zip_of(entries)
    job = wait_job(jobs_client, submitted(jobs_client, archive, domain="usps"))
    assert job["kind"] == "ingest" and job["status"] == "succeeded", job
    assert job["progress"] == {"done": 50, "total": 50}
    assert (job["result"]["created"], job["result"]["existing"], job["result"]["failed"]) == (50, 0, 0)
    assert job["errors"] == []
    items = jobs_client.get("/v1/images", params={"domain": "usps", "limit": 1000}).json()["items"]
    assert len(items) == 50
    assert sorted(i["label"] for i in items) == sorted(label for _, label in digit_pngs[:50])

    # the API process's index sees the worker's writes: each image is found at distance 0
    for data, _ in digit_pngs[:3]:
        hits = search(jobs_client, data, k=50, max_distance=0, domain="usps").json()["hits"]
        assert hits and all(hit["distance"] == 0 for hit in hits)
        ids = {hit["id"] for hit in hits}
        assert any(item["id"] in ids and item["sha256"] for item in items)

    again = wait_job(jobs_client, submitted(jobs_client, archive, domain="usps"))
    assert again["status"] == "succeeded"
    assert (again["result"]["created"], again["result"]["existing"]) == (0, 50)
    assert count_images(jobs_client) == 50
    assert not any(live.settings.archives_dir.iterdir())  # a finished job's archive is removed


def test_manifest_labels_and_domains_from_a_tar_gz(
    jobs_client: httpx.Client, worker: WorkerThread, digit_pngs: list[tuple[bytes, str]]
) -> None:
    files = [(f"img/{i}.png", data) for i, (data, _) in enumerate(digit_pngs[:6])]
    rows = ["path,label,domain"]
    rows += [f"img/{i}.png,digit-{label},{'mnist' if i % 2 else ''}" for i, (_, label) in enumerate(digit_pngs[:6])]
    rows.append("img/missing.png,x,")
    archive = tar_of([("manifest.csv", "\n".join(rows).encode()), *files])
    job = wait_job(jobs_client, submitted(jobs_client, archive, domain="usps", name="a.tgz"))
    assert job["status"] == "succeeded", job
    assert (job["result"]["created"], job["result"]["failed"]) == (6, 1)
    assert [e["code"] for e in job["errors"]] == ["missing_member"]
    usps = jobs_client.get("/v1/images", params={"domain": "usps"}).json()["items"]
    mnist = jobs_client.get("/v1/images", params={"domain": "mnist"}).json()["items"]
    assert (len(usps), len(mnist)) == (3, 3)
    labels = {i["metadata"]["archive_path"]: i["label"] for i in usps + mnist}
    assert labels == {f"img/{i}.png": f"digit-{label}" for i, (_, label) in enumerate(digit_pngs[:6])}


def _link(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_hostile_members_are_refused_and_the_rest_ingested(
    live: LiveServer, jobs_client: httpx.Client, worker: WorkerThread, digit_pngs: list[tuple[bytes, str]]
) -> None:
    good = digit_pngs[0][0]
    entries = [("../evil.png", good), ("/abs/evil.png", good), ("ok/fine.png", good), ("ok/notes.txt", b"hello")]
    extra = [
        _link("ok/link.png", tarfile.SYMTYPE, "/etc/passwd"),
        _link("ok/hard.png", tarfile.LNKTYPE, "ok/fine.png"),
        _link("ok/dev", tarfile.CHRTYPE),
    ]
    job = wait_job(jobs_client, submitted(jobs_client, tar_of(entries, mode="w", extra=extra), name="a.tar"))
    assert job["status"] == "succeeded", job
    assert job["result"]["created"] == 1
    by_item = {e["item"]: e["code"] for e in job["errors"]}
    assert by_item == {
        "../evil.png": "unsafe_path",
        "/abs/evil.png": "unsafe_path",
        "ok/link.png": "not_a_file",
        "ok/hard.png": "not_a_file",
        "ok/dev": "not_a_file",
        "ok/notes.txt": "unsupported_media_type",
    }
    assert not any(p.name == "evil.png" for p in live.settings.data_dir.parent.rglob("*"))

    zipped = wait_job(jobs_client, submitted(jobs_client, zip_of([("../../z.png", good), ("/z.png", good)])))
    assert zipped["status"] == "succeeded" and {e["code"] for e in zipped["errors"]} == {"unsafe_path"}


@pytest.mark.parametrize(
    ("archive", "code"),
    [
        (zip_of([(f"d/{i}.png", b"x") for i in range(101)], compression=zipfile.ZIP_STORED), "too_many_members"),
        (zip_of([("bomb.png", bytes(5_000_000))]), "expansion_ratio"),
        (tar_of([("bomb.png", bytes(5_000_000))]), "expansion_ratio"),
    ],
    ids=["too-many-members", "zip-bomb", "tar-gz-bomb"],
)
def test_archives_over_the_limits_fail_with_a_clear_error(
    jobs_client: httpx.Client, worker: WorkerThread, archive: bytes, code: str
) -> None:
    job = wait_job(jobs_client, submitted(jobs_client, archive))
    assert job["status"] == "failed"
    assert job["errors"][0]["code"] == code and job["errors"][0]["message"]
    assert count_images(jobs_client) == 0


def test_not_an_archive_is_refused_before_queueing(
    jobs_client: httpx.Client, digit_pngs: list[tuple[bytes, str]]
) -> None:
    assert_error(submit(jobs_client, digit_pngs[0][0], name="fake.zip"), 415, "not_an_archive")
    assert_error(submit(jobs_client, b"", name="empty.zip"), 415, "not_an_archive")
    assert_error(submit(jobs_client, zip_of([]), domain="../x"), 422)
    assert_error(jobs_client.get("/v1/jobs/999"), 404, "job_not_found")
    assert_error(jobs_client.post("/v1/jobs/999/cancel"), 404, "job_not_found")


def test_writes_need_the_api_key(live: LiveServer) -> None:
    anonymous = live.client(api_key=None)
    assert_error(submit(anonymous, zip_of([])), 401)
    assert_error(anonymous.post("/v1/jobs/1/cancel"), 401)


def test_cancel_a_queued_job(jobs_client: httpx.Client, digit_pngs: list[tuple[bytes, str]]) -> None:
    job_id = submitted(jobs_client, zip_of(image_folder(digit_pngs, 3)))  # no worker runs: it stays queued
    assert jobs_client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    cancelled = jobs_client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert jobs_client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_cancel_a_running_job_between_batches(live: LiveServer, jobs_client: httpx.Client) -> None:
    def slow(context: JobContext) -> dict[str, Any]:
        for done in range(1000):
            time.sleep(0.02)
            context.progress(done, 1000)
        return {}

    db = Database(live.settings.sqlalchemy_url)
    with db.session() as session:
        job_id = queue.enqueue(session, "slow", {}).id
        session.commit()
    db.close()
    thread = WorkerThread(live, {"slow": slow}).start()
    try:
        wait_job(jobs_client, job_id, until=lambda job: job["progress"]["done"] > 0)
        assert jobs_client.post(f"/v1/jobs/{job_id}/cancel").json()["cancel_requested"] is True
        job = wait_job(jobs_client, job_id)
        assert job["status"] == "cancelled" and job["progress"]["done"] < 1000
    finally:
        thread.stop()


def test_a_job_left_running_by_a_dead_worker_is_queued_again(
    live: LiveServer, jobs_client: httpx.Client, digit_pngs: list[tuple[bytes, str]]
) -> None:
    job_id = submitted(jobs_client, zip_of(image_folder(digit_pngs, 5)))
    db = Database(live.settings.sqlalchemy_url)
    try:
        dead = queue.claim(db, queue.new_token())  # a worker claimed it, then died without a heartbeat
        assert dead is not None and dead.id == job_id
        with db.session() as session:
            old = utc_now() - timedelta(seconds=60)
            session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=old))
            session.commit()
        assert jobs_client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        thread = WorkerThread(live).start()
        try:
            job = wait_job(jobs_client, job_id)
        finally:
            thread.stop()
        assert job["status"] == "succeeded" and job["result"]["created"] == 5
        with db.session() as session:
            assert session.get(Job, job_id).attempts == 2  # type: ignore[union-attr]
    finally:
        db.close()
    assert_error(jobs_client.post(f"/v1/jobs/{job_id}/cancel"), 409, "job_finished")


def test_serve_runs_its_worker_process(tmp_path: Path, api_artefact: Path, digit_pngs: list[tuple[bytes, str]]) -> None:
    port = free_port()
    env = metah_environment(
        DATA_DIR=str(tmp_path / "var"), MODEL=str(api_artefact), PORT=str(port), API_KEY=API_KEY, WORKER_POLL_S="0.1"
    )
    with running_metah_serve(env, port) as run:
        job = wait_job(run.client, submitted(run.client, zip_of(image_folder(digit_pngs, 20))))
        assert job["status"] == "succeeded" and job["result"]["created"] == 20, job
        hits = search(run.client, digit_pngs[0][0], max_distance=0).json()["hits"]
        assert hits and hits[0]["distance"] == 0
    output = run.output
    assert run.process.returncode in (0, -signal.SIGTERM), output
    assert "job worker started" in output and "worker stopped" in output and "Traceback" not in output


class SearchLoop:
    """Searches one image over and over in a thread: ``(status, model_version, bits, nearest distance)`` each."""

    def __init__(self, live: LiveServer, image: bytes) -> None:
        self.client = live.client()
        self.image = image
        self.answers: list[tuple[int, str | None, int | None, int | None]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="search-loop", daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            response = search(self.client, self.image, k=3, domain="usps")
            body = response.json() if response.status_code == 200 else {}
            nearest = body["hits"][0]["distance"] if body.get("hits") else None
            self.answers.append((response.status_code, body.get("model_version"), body.get("bits"), nearest))
            time.sleep(0.02)

    def start(self) -> SearchLoop:
        self.thread.start()
        return self

    def stop(self, *, after_version: str) -> list[tuple[int, str | None, int | None, int | None]]:
        """Stop once an answer from ``after_version`` has been recorded (the loop may lag behind the swap)."""
        deadline = time.monotonic() + 30
        while not any(answer[1] == after_version for answer in self.answers) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.done.set()
        self.thread.join(timeout=30)
        return self.answers


def test_train_then_activate_swaps_model_and_index(
    live: LiveServer, jobs_client: httpx.Client, worker: WorkerThread, digits: DigitFolders, digit_pngs: PNGs
) -> None:
    mnist = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted(digits.source.rglob("*.png"))[::8]]
    for archive, domain in ((zip_of(mnist), "mnist"), (zip_of(image_folder(digit_pngs, 30)), "usps")):
        assert wait_job(jobs_client, submitted(jobs_client, archive, domain=domain))["status"] == "succeeded"
    old = jobs_client.get("/readyz").json()
    total = count_images(jobs_client)
    searching = SearchLoop(live, digit_pngs[0][0]).start()  # searches run throughout training and the swap

    body = {"source_domain": "mnist", "target_domain": "usps", "bits": 32, "iterations": 10, "activate": True}
    response = jobs_client.post("/v1/training-jobs", json=body)
    assert response.status_code == 202, response.text
    trained = wait_job(jobs_client, response.json()["job_id"])
    assert trained["kind"] == "train" and trained["status"] == "succeeded", trained
    assert trained["progress"] == {"done": 10, "total": 10}
    version = trained["result"]["version"]
    assert version != old["model_version"] and trained["result"]["sources"] == len(mnist)
    models = jobs_client.get("/v1/models").json()
    assert version in {m["version"] for m in models["items"]}

    activated = wait_job(jobs_client, trained["result"]["activation_job_id"])
    assert activated["kind"] == "activate" and activated["status"] == "succeeded", activated
    assert activated["result"]["encoded"] == total
    deadline = time.monotonic() + 30
    while (ready := jobs_client.get("/readyz").json())["model_version"] != version:
        assert time.monotonic() < deadline, ready
        time.sleep(0.05)
    assert ready["indexed"] == total
    found = search(jobs_client, digit_pngs[0][0], max_distance=0, domain="usps").json()
    assert found["model_version"] == version and found["hits"] and found["hits"][0]["distance"] == 0
    assert jobs_client.get("/v1/models").json()["active"] == version

    answers = searching.stop(after_version=version)
    assert {status for status, _, _, _ in answers} == {200}  # no 5xx, no 503 while the pair was swapped
    versions = [answer_version for _, answer_version, _, _ in answers]
    assert versions[0] == old["model_version"] and versions[-1] == version, sorted(set(versions))
    switch = versions.index(version)
    assert set(versions[:switch]) == {old["model_version"]} and set(versions[switch:]) == {version}
    # Each answer comes from one pair: the old 16-bit model with its index, or the new 32-bit one with its own;
    # the stored copy of the query is found at distance 0 either way.
    assert {(v, bits) for _, v, bits, _ in answers} == {(old["model_version"], 16), (version, 32)}
    assert {nearest for _, _, _, nearest in answers} == {0}


def test_activation_requests_are_checked(live: LiveServer, jobs_client: httpx.Client) -> None:
    version = jobs_client.get("/readyz").json()["model_version"]
    assert_error(jobs_client.post("/v1/models/no-such-model/activate"), 404, "model_not_found")
    first = jobs_client.post(f"/v1/models/{version}/activate")  # no worker runs: it stays queued
    assert first.status_code == 202
    assert_error(jobs_client.post(f"/v1/models/{version}/activate"), 409, "activation_running")
    assert_error(jobs_client.post("/v1/training-jobs", json={"source_domain": "a", "bits": 12}), 422)


def test_concurrent_activation_requests_queue_exactly_one(live: LiveServer) -> None:
    version = live.client().get("/readyz").json()["model_version"]
    requests = 8
    barrier = threading.Barrier(requests)
    statuses: list[int] = []

    def activate() -> None:
        client = live.client()
        barrier.wait()
        response = client.post(f"/v1/models/{version}/activate")  # no worker runs: the winner stays queued
        if response.status_code == 409:
            assert_error(response, 409, "activation_running")
        statuses.append(response.status_code)

    threads = [threading.Thread(target=activate) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(statuses) == [202] + [409] * (requests - 1)
    queued = live.client().get("/v1/jobs", params={"kind": "activate"}).json()["items"]
    assert [job["status"] for job in queued] == ["queued"]
