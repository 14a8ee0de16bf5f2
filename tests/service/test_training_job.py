"""The training job's handler against a real SQLite database and blob store (no HTTP server): its class
folders, and its run folder across a kill -9 of the worker process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from migrations.models import Image
from migrations.runner import upgrade
from model.data import list_labelled_folder
from service.db import Database
from service.jobs import queue, training
from service.jobs.worker import JobContext
from service.settings import Settings
from service.storage import BlobStore, sha256_hex
from tests.conftest import DigitFolders
from tests.service.conftest import make_settings


@dataclass
class Library:
    settings: Settings
    db: Database
    store: BlobStore

    def add(self, data: bytes, domain: str, label: str | None) -> None:
        relative, _ = self.store.put(data)
        with self.db.session() as session:
            session.add(
                Image(
                    sha256=sha256_hex(data),
                    domain=domain,
                    label=label,
                    meta={},
                    media_type="image/png",
                    size_bytes=len(data),
                    width=28,
                    height=28,
                    stored_path=relative,
                )
            )
            session.commit()

    def context(self, job_id: int | None = None, **params: Any) -> JobContext:
        """A claimed job's context (a new training job's unless ``job_id`` names a queued one)."""
        if job_id is None:
            with self.db.session() as session:
                job_id = queue.enqueue(session, training.KIND, params).id
                session.commit()
        token = queue.new_token()
        job = queue.claim(self.db, token)
        assert job is not None and job.id == job_id
        return JobContext(self.settings, self.db, self.store, job, token, threading.Event())


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Library]:
    settings = make_settings(tmp_path / "data", model=None)
    settings.data_dir.mkdir()
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    yield Library(settings, db, BlobStore(settings.data_dir))
    db.close()


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
    for i, path in enumerate(files):
        library.add(path.read_bytes(), "mnist", ["a/b", "a_b", "a b"][i % 3])
    out = tmp_path / "source"
    assert training.export_domain(library.context(), "mnist", out, labelled=True) == 6
    classes = list_labelled_folder(out).classes
    assert len(classes) == 3, classes
