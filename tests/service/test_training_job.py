"""The training job's handler against a real SQLite database and blob store (no HTTP server): its class
folders, and its run folder across a kill -9 of the worker process."""

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
from service.jobs.process import settings_env
from service.models import Job, utc_now
from tests.conftest import DigitFolders
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


def test_a_failed_training_job_removes_its_run_folder(library: Library, digits: DigitFolders) -> None:
    library.add_digits(digits, target=False)
    job_id = library.enqueue(training.KIND, **TRAINING, iterations=10)
    assert library.worker.run_once()
    job = library.job(job_id)
    assert job.status == queue.FAILED and job.errors[0]["code"] == "no_training_data", job.errors
    assert not training.run_folder(library.settings, job_id).exists()
