"""The service with ``METAH_BLOB_URL`` on a real S3 server (radosgw, tests/s3server.py): images, model artefacts,
their plots and uploaded archives live in the bucket, so the API and a job worker need no disk in common, and a
server started on an empty data dir serves everything the database knows. Then what clients and operators see
when S3 fails: 503 with the contract's error body, one line from the CLI.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.blobs import sweep
from service.cli import main
from service.db import Database
from service.storage import blob_key, model_key
from service.storage_s3 import S3BlobStore
from tests.conftest import DigitFolders
from tests.s3server import S3Server, fresh_bucket
from tests.service.conftest import (
    API_KEY,
    REPO,
    assert_error,
    free_port,
    make_settings,
    metah_environment,
    post_image,
    running_metah_serve,
    search,
    start_live_server,
)
from tests.service.test_api_jobs import image_folder, submit, submitted, wait_job, zip_of

PNGs = list[tuple[bytes, str]]
FAST_JOBS = {"WORKER_POLL_S": "0.1", "CHANGES_POLL_S": "0.2", "INGEST_BATCH_SIZE": "8"}


def stored_files(data_dir: Path) -> list[str]:
    """The files a local blob store would hold in ``data_dir`` (images, model artefacts, plots, archives)."""
    folders = ("images", "models", "archives")
    return [str(p) for folder in folders for p in (data_dir / folder).rglob("*") if p.is_file()]


@contextmanager
def running_metah_worker(env: dict[str, str]) -> Iterator[list[str]]:
    """A real ``metah worker`` process; SIGTERM and wait on exit, then its log is the list's one item."""
    output: list[str] = []
    with tempfile.TemporaryFile(mode="w+") as log:
        command = [sys.executable, "-m", "service.cli", "worker"]
        worker = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            yield output
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
            log.seek(0)
            output.append(log.read())


def wait_ready(client: httpx.Client, version: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while (ready := client.get("/readyz").json()).get("model_version") != version:
        assert time.monotonic() < deadline, ready
        time.sleep(0.1)
    return ready


def stored_copy(client: httpx.Client, data: bytes) -> httpx.Response:
    """The content response of the one stored ``usps`` image with ``data``'s bytes, found among the query's hits at
    distance 0 (ties are ordered by id, so the copy need not be the first hit)."""
    hits = search(client, data, max_distance=0, domain="usps", k=1000).json()["hits"]
    contents = [client.get(hit["content_url"]) for hit in hits]
    assert hits and all(content.status_code == 200 for content in contents), hits
    copies = [content for content in contents if content.content == data]
    assert len(copies) == 1, f"{len(hits)} hit(s) at distance 0, {len(copies)} with the query's bytes"
    return copies[0]


def test_an_api_and_a_worker_without_a_shared_disk_keep_everything_in_s3(
    tmp_path: Path, api_artefact: Path, digits: DigitFolders, digit_pngs: PNGs, s3_environ: S3Server
) -> None:
    """The API (``metah serve``) and a ``metah worker``, each on its own empty data dir, sharing only the database
    and the bucket: ingest (one upload, two archives), search, fetch, train and activate, delete; then a server on
    a fresh data dir without ``METAH_MODEL`` serves the trained model and the images from the bucket alone."""
    bucket = fresh_bucket()
    store = S3BlobStore(bucket, "e2e")  # the test's own view of the bucket
    shared = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'metah.db'}",
        "BLOB_URL": f"s3://{bucket}/e2e",
        "API_KEY": API_KEY,
        **FAST_JOBS,
    }
    first, worker_dir, second = tmp_path / "first", tmp_path / "worker", tmp_path / "second"
    port = free_port()
    env = metah_environment(DATA_DIR=str(first), MODEL=str(api_artefact), PORT=str(port), WORKERS="0", **shared)
    migrated = subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert migrated.returncode == 0, migrated.stderr
    assert f"blob store s3://{bucket}/e2e: bucket created" in migrated.stdout

    usps = digit_pngs[:12]
    mnist = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted(digits.source.rglob("*.png"))[::8]]
    with (
        running_metah_serve(env, port) as run,
        running_metah_worker(metah_environment(DATA_DIR=str(worker_dir), **shared)) as worker,
    ):
        client = run.client
        first_version = str(client.get("/readyz").json()["model_version"])
        single = post_image(client, usps[0][0], label=usps[0][1], domain="usps").json()
        twin = post_image(client, usps[0][0], domain="elsewhere").json()  # same bytes, another row, one object
        for archive, domain in ((zip_of(image_folder(usps[1:], 11)), "usps"), (zip_of(mnist), "mnist")):
            job = wait_job(client, submitted(client, archive, domain=domain))
            assert job["status"] == "succeeded" and job["result"]["failed"] == 0, job
        total = 2 + 11 + len({data for _, data in mnist})
        assert len(client.get("/v1/images", params={"limit": 1000}).json()["items"]) == total
        for data in [data for data, _ in usps] + [data for _, data in mnist]:
            assert store.exists(blob_key(hashlib.sha256(data).hexdigest()))

        content = stored_copy(client, usps[5][0])
        assert content.headers["content-type"] == "image/png"
        assert content.headers["content-length"] == str(len(usps[5][0]))
        assert content.headers["etag"] == f'"{hashlib.sha256(usps[5][0]).hexdigest()}"'
        assert content.headers["x-content-type-options"] == "nosniff"

        body = {"source_domain": "mnist", "target_domain": "usps", "bits": 32, "iterations": 10, "activate": True}
        response = client.post("/v1/training-jobs", json=body)
        assert response.status_code == 202, response.text
        trained = wait_job(client, response.json()["job_id"], timeout_s=180)
        assert trained["status"] == "succeeded", trained
        version = trained["result"]["version"]
        activated = wait_job(client, trained["result"]["activation_job_id"], timeout_s=120)
        assert activated["status"] == "succeeded" and activated["result"]["encoded"] == total, activated
        assert wait_ready(client, version)["indexed"] == total
        for model in (first_version, version):
            assert store.exists(model_key(model))
        figure = client.get(f"/v1/models/{version}/plots/pr_curve.png")
        assert figure.status_code == 200 and figure.content == store.get(model_key(version, "pr_curve.png"))

        key = blob_key(single["sha256"])
        assert client.delete(f"/v1/images/{single['id']}").status_code == 204
        assert store.exists(key)  # the twin's row still points at it
        assert client.delete(f"/v1/images/{twin['id']}").status_code == 204
        assert store.exists(key)  # until the blob sweep: a worker may be storing the same bytes
        database = Database(shared["DATABASE_URL"])
        time.sleep(0.01)
        assert sweep(database, store, 0.001) == 1
        database.close()
        assert not store.exists(key)
    assert "Traceback" not in run.output, run.output
    assert "Traceback" not in worker[0] and "worker started" in worker[0], worker[0]
    assert stored_files(first) == stored_files(worker_dir) == []
    archives = store.client.list_objects_v2(Bucket=bucket, Prefix="e2e/archives/").get("Contents", [])
    assert archives == []  # removed when their jobs finished

    port = free_port()
    env = metah_environment(DATA_DIR=str(second), PORT=str(port), **shared)  # no METAH_MODEL
    with running_metah_serve(env, port) as run:
        client = run.client
        assert wait_ready(client, version)["indexed"] == total - 2
        for data, _ in usps[1:4]:
            stored_copy(client, data)
        assert_error(client.get(f"/v1/images/{single['id']}/content"), 404, "image_not_found")
        assert client.get(f"/v1/models/{version}/plots/loss_curves.png").status_code == 200
    assert "Traceback" not in run.output, run.output
    assert stored_files(second) == []


def empty_and_remove(store: S3BlobStore) -> None:
    for listed in store.client.list_objects_v2(Bucket=store.bucket).get("Contents", []):
        store.client.delete_object(Bucket=store.bucket, Key=listed["Key"])
    store.client.delete_bucket(Bucket=store.bucket)


def test_a_bucket_gone_behind_the_service_is_a_503_with_the_contract_error(
    tmp_path: Path, api_artefact: Path, digit_pngs: PNGs, s3_environ: S3Server
) -> None:
    store = S3BlobStore(fresh_bucket())
    assert store.create_if_missing()
    live = start_live_server(make_settings(tmp_path / "data", blob_url=f"s3://{store.bucket}", model=api_artefact))
    try:
        client = live.client()
        version = client.get("/readyz").json()["model_version"]
        image_id = post_image(client, digit_pngs[0][0]).json()["id"]
        empty_and_remove(store)

        refused = assert_error(post_image(client, digit_pngs[1][0]), 503, "storage_unavailable")
        assert refused["error"]["message"] == "the blob store is unavailable: its bucket does not exist"
        assert store.bucket not in refused["error"]["message"]  # the details are for the log, not for clients
        assert_error(client.get(f"/v1/images/{image_id}/content"), 503, "storage_unavailable")
        archive = zip_of(image_folder(digit_pngs[3:], 3))
        assert_error(submit(client, archive), 503, "storage_unavailable")
        assert list((tmp_path / "data" / "archives").iterdir()) == []  # the upload's temporary file is gone
        assert_error(client.get(f"/v1/models/{version}/plots/pr_curve.png"), 503, "storage_unavailable")
        assert client.delete(f"/v1/images/{image_id}").status_code == 204  # the row goes; its blob is logged
        assert search(client, digit_pngs[2][0]).status_code == 200  # searches need no blob
    finally:
        live.stop()


def no_aws_setup(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Only ``values`` of the AWS and METAH variables, nothing of this machine's."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "METAH_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_an_unreachable_endpoint_leaves_the_server_unready_and_the_cli_says_so(
    tmp_path: Path, api_artefact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    no_aws_setup(
        monkeypatch,
        AWS_ENDPOINT_URL_S3=endpoint,
        AWS_ACCESS_KEY_ID="AKIDEXAMPLE",
        AWS_SECRET_ACCESS_KEY="secret",
        AWS_REGION="us-east-1",
        METAH_DATA_DIR=str(tmp_path / "cli"),
        METAH_BLOB_URL="s3://metah-nowhere",
    )
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert f"metah migrate: error: blob store: S3 cannot be reached at s3://metah-nowhere at {endpoint}" in err
    assert "Traceback" not in err

    live = start_live_server(make_settings(tmp_path / "data", blob_url="s3://metah-nowhere", model=api_artefact))
    try:
        body = assert_error(live.client().get("/readyz"), 503, "not_ready")
        assert body["error"]["message"].endswith("the blob store is unavailable: it cannot be reached")
    finally:
        live.stop()


def test_migrate_says_when_s3_refuses_the_credentials(
    tmp_path: Path, s3_environ: S3Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_aws_setup(
        monkeypatch,
        **{**s3_environ.environ, "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        METAH_DATA_DIR=str(tmp_path),
        METAH_BLOB_URL=f"s3://{fresh_bucket()}",
    )
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert "metah migrate: error: blob store: S3 refused access" in err and "not-the-secret" not in err
    assert "Traceback" not in err
