"""A job worker's world without an HTTP server: a migrated SQLite database and a blob store in a temporary data
dir, images stored straight into both, jobs queued and run one at a time in the test's thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.db import Database
from service.jobs import queue
from service.jobs.process import handlers
from service.jobs.worker import JobContext, Worker
from service.migrate import upgrade
from service.models import Image, Job
from service.settings import Settings
from service.storage import sha256_hex
from tests.conftest import DigitFolders
from tests.service.conftest import make_settings


def image_row(data: bytes, stored_path: str, domain: str, label: str | None, *, side: int) -> Image:
    """The row of a PNG of ``side`` × ``side`` pixels stored under ``stored_path`` (not yet added)."""
    return Image(
        sha256=sha256_hex(data),
        domain=domain,
        label=label,
        meta={},
        media_type="image/png",
        size_bytes=len(data),
        width=side,
        height=side,
        stored_path=stored_path,
    )


@dataclass
class Library:
    settings: Settings
    db: Database
    worker: Worker  # not running: its blob store, and run_once() for the next job

    def add(self, images: list[tuple[bytes, str, str | None]]) -> list[int]:
        """Store ``(bytes, domain, label)`` images (blobs and rows, one transaction); returns their ids."""
        paths = self.worker.store.put_many([data for data, _, _ in images])
        rows = [
            image_row(data, relative, domain, label, side=28)
            for (data, domain, label), relative in zip(images, paths, strict=True)
        ]
        with self.db.session() as session:
            session.add_all(rows)
            session.commit()
            return [row.id for row in rows]

    def add_digits(self, digits: DigitFolders, *, target: bool = True) -> None:
        """Every third MNIST digit, labelled, in ``mnist``; every third USPS digit, unlabelled, in ``usps``."""
        images: list[tuple[bytes, str, str | None]] = [
            (path.read_bytes(), "mnist", path.parent.name) for path in sorted(digits.source.rglob("*.png"))[::3]
        ]
        if target:
            images += [(path.read_bytes(), "usps", None) for path in sorted(digits.target.rglob("*.png"))[::3]]
        self.add(images)

    def enqueue(self, kind: str, **params: Any) -> int:
        with self.db.session() as session:
            job_id = queue.enqueue(session, kind, params).id
            session.commit()
        return job_id

    def job(self, job_id: int) -> Job:
        job = queue.get(self.db, job_id)
        assert job is not None
        return job

    def context(self, kind: str, **params: Any) -> JobContext:
        """The context of a new job, claimed."""
        job_id = self.enqueue(kind, **params)
        token = queue.new_token()
        job = queue.claim(self.db, token)
        assert job is not None and job.id == job_id
        return JobContext(self.settings, self.db, self.worker.store, job, token, threading.Event())


@contextmanager
def open_library(tmp_path: Path) -> Iterator[Library]:
    settings = make_settings(tmp_path / "data", model=None)
    settings.data_dir.mkdir()
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    try:
        yield Library(settings, db, Worker(settings, db, handlers()))
    finally:
        db.close()
