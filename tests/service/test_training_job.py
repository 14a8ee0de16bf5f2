"""The training job's handler against a real SQLite database and blob store (no HTTP server): its class
folders, its run folder across a kill -9 of the worker process, and its checkpoint in the blob store (the local
folder and S3 on a real radosgw) for a retry on another worker with an empty data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from model.checkpoint import load_checkpoint
from model.data import list_labelled_folder
from service.jobs import queue, training
from service.jobs.process import handlers, settings_env
from service.jobs.worker import Worker
from service.models import Job, utc_now
from service.storage import BlobStore, BlobStoreError, LocalBlobStore, checkpoint_key, checkpoint_of
from service.storage_s3 import S3BlobStore
from tests.conftest import DigitFolders
from tests.s3server import fresh_bucket
from tests.service.conftest import REPO
from tests.service.library import Library, open_library

TRAINING = {"source_domain": "mnist", "target_domain": "usps", "bits": 16, "method": "metah", "backbone": "lenet"}


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Library]:
    with open_library(tmp_path) as opened:
        yield opened


def test_class_folder_names_are_distinct_and_safe() -> None:
    labels = ["a/b", "a_b", "a b", "a%2Fb", "a%b", ".", "..", ".hidden", "%2Ehidden", "", "%", "Ünïcode", "x" * 256]
    labels += ["y" * 300 + "1", "y" * 300 + "2", "z/" * 120]  # long labels sharing a long start
    names = [training.class_folder_name(label) for label in labels]
    assert len(set(names)) == len(labels), names
    for name in names:
        assert name not in ("", ".", "..") and "/" not in name and not name.startswith(".")
        assert len(name.encode()) <= training.MAX_FOLDER_NAME and name.isascii()
    assert training.class_folder_name("cat") == "cat"  # plain labels stay readable


def test_a_job_without_a_length_takes_the_mode_s_and_checkpoints_ten_times(library: Library) -> None:
    unset = training.job_config({**TRAINING, "iterations": None}, library.settings)
    # the checkpoint interval follows the length the run resolves: 3600 frozen / 1200 finetune
    assert (unset.iterations, unset.checkpoint_every) == (None, None)
    assert unset.override(mode="frozen").checkpoint_interval == 200
    assert unset.override(mode="finetune").checkpoint_interval == 120
    assert unset.feature_cache == str(library.settings.data_dir / "feature-cache")
    short = training.job_config({**TRAINING, "iterations": 30}, library.settings)
    assert (short.iterations, short.override(mode="frozen").checkpoint_interval) == (30, 3)
    legacy = training.job_config(TRAINING, library.settings)  # queued before the field was optional
    assert (legacy.iterations, legacy.mode) == (None, "auto")


def test_labels_that_look_alike_stay_distinct_classes(library: Library, digits: DigitFolders, tmp_path: Path) -> None:
    files = sorted(digits.source.rglob("*.png"))[:6]
    library.add([(path.read_bytes(), "mnist", ["a/b", "a_b", "a b"][i % 3]) for i, path in enumerate(files)])
    out = tmp_path / "source"
    assert training.export_domain(library.context(training.KIND), "mnist", out, labelled=True) == 6
    classes = list_labelled_folder(out).classes
    assert len(classes) == 3, classes


def test_a_training_job_killed_mid_run_resumes_from_its_checkpoint_and_leaves_no_folder(
    library: Library, digits: DigitFolders, tmp_path: Path
) -> None:
    library.add_digits(digits)
    settings = library.settings
    leftovers = [training.run_folder(settings, 999), settings.data_dir / "metah-train-0123abcd"]
    for folder in leftovers:  # a cancelled job's run folder, an older version's temporary folder
        (folder / "source").mkdir(parents=True)
    iterations = 60  # a checkpoint every 6 steps
    job_id = library.enqueue(training.KIND, **TRAINING, iterations=iterations)
    run = training.run_folder(settings, job_id)
    checkpoint = run / "run" / "checkpoint.pt"

    # A real worker process, killed with SIGKILL once it has written a checkpoint.
    with (tmp_path / "worker.log").open("w+") as log:
        env = {**settings_env(settings), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "service.cli", "worker"]
        worker = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not checkpoint.is_file() and library.job(job_id).status not in queue.FINISHED:
                assert worker.poll() is None and time.monotonic() < deadline, log.read()
                time.sleep(0.02)
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
        log.seek(0)
        assert checkpoint.is_file(), f"no checkpoint in the job's run folder {run}:\n{log.read()}"
    saved = int(load_checkpoint(checkpoint)["step"])
    assert 0 < saved < iterations and library.job(job_id).status == queue.RUNNING
    assert not any(folder.exists() for folder in leftovers)  # swept when the job started

    # The dead worker's heartbeat goes silent; the next worker queues the job again and runs it.
    with library.db.session() as session:
        silent = utc_now() - timedelta(seconds=settings.job_stale_after_s + 1)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=silent))
        session.commit()
    assert library.worker.run_once()
    job = library.job(job_id)
    assert job.status == queue.SUCCEEDED and job.attempts == 2, job.errors
    assert job.result["resumed_from_step"] == saved
    assert (job.progress_done, job.progress_total) == (iterations, iterations)
    assert not run.exists() and not list((settings.data_dir / training.RUNS).iterdir())


@pytest.fixture(params=["local", "s3"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """The one thing the workers share besides the database: a folder of its own, or a bucket on radosgw."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "shared")
    request.getfixturevalue("s3_environ")
    store = S3BlobStore.from_url(f"s3://{fresh_bucket()}/tests/training")
    assert store.create_if_missing()
    return store


def test_a_training_job_retried_on_another_worker_resumes_from_its_stored_checkpoint(
    library: Library, digits: DigitFolders, shared_store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = library.worker
    first.store = shared_store
    library.add_digits(digits)
    stale = tmp_path / "stale.pt"
    stale.write_bytes(b"the checkpoint of a job that will not run again")
    shared_store.put_file(checkpoint_key(999, 4), stale)
    iterations = 20  # a checkpoint every 2 steps, progress (where a stop is noticed) every 5
    job_id = library.enqueue(training.KIND, **TRAINING, iterations=iterations)

    # The first worker stops once a checkpoint is stored: the job is released at step 5, the one of step 4 stored.
    put_file = shared_store.put_file

    def put_then_stop(key: str, path: Path) -> None:
        put_file(key, path)
        if checkpoint_of(key) is not None:
            first.stop()

    monkeypatch.setattr(shared_store, "put_file", put_then_stop)
    assert first.run_once()
    monkeypatch.undo()
    assert library.job(job_id).status == queue.QUEUED
    assert list(shared_store.checkpoint_keys()) == [checkpoint_key(job_id, 4)]  # step 2's deleted, the stale one too

    # Another worker, on an empty data dir of its own, runs the job again from that checkpoint.
    settings = library.settings.model_copy(update={"data_dir": tmp_path / "other"})
    settings.data_dir.mkdir()
    second = Worker(settings, library.db, handlers())
    second.store = shared_store
    assert second.run_once()
    job = library.job(job_id)
    assert job.status == queue.SUCCEEDED and job.attempts == 1, job.errors
    assert job.result["resumed_from_step"] == 4
    assert list(shared_store.checkpoint_keys()) == []
    assert not training.run_folder(settings, job_id).exists()


def test_a_training_job_cancelled_mid_run_leaves_no_stored_checkpoint(
    library: Library, digits: DigitFolders, monkeypatch: pytest.MonkeyPatch
) -> None:
    library.add_digits(digits)
    job_id = library.enqueue(training.KIND, **TRAINING, iterations=20)
    store = library.worker.store
    put_file = store.put_file

    def put_then_cancel(key: str, path: Path) -> None:
        put_file(key, path)
        queue.request_cancel(library.db, job_id)

    monkeypatch.setattr(store, "put_file", put_then_cancel)
    assert library.worker.run_once()
    assert library.job(job_id).status == queue.CANCELLED
    assert list(store.checkpoint_keys()) == []
    assert not training.run_folder(library.settings, job_id).exists()


def test_a_checkpoint_the_store_refuses_does_not_stop_training(
    library: Library, digits: DigitFolders, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    library.add_digits(digits)
    job_id = library.enqueue(training.KIND, **TRAINING, iterations=10)

    def unavailable(key: str, path: Path) -> None:
        raise BlobStoreError("S3 cannot be reached", reason="it cannot be reached")

    monkeypatch.setattr(library.worker.store, "put_file", unavailable)
    assert library.worker.run_once()
    job = library.job(job_id)
    assert job.status == queue.SUCCEEDED, job.errors
    assert "the checkpoint of step 1 was not stored" in caplog.text
    assert list(library.worker.store.checkpoint_keys()) == []


def test_a_failed_training_job_removes_its_run_folder(library: Library, digits: DigitFolders) -> None:
    library.add_digits(digits, target=False)
    job_id = library.enqueue(training.KIND, **TRAINING, iterations=10)
    assert library.worker.run_once()
    job = library.job(job_id)
    assert job.status == queue.FAILED and job.errors[0]["code"] == "no_training_data", job.errors
    assert not training.run_folder(library.settings, job_id).exists()
