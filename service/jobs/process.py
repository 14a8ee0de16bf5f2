"""Job workers as child processes of ``metah serve`` (``METAH_WORKERS``, default 1, plus ``METAH_INGEST_WORKERS``
that only ingest archives, default 1), and ``metah worker``.

A child gets the parent's settings through ``METAH_*`` variables, except the API key (a worker answers no
request), and exits when it is told to (SIGTERM: the running job goes back to the queue between batches) or
when its parent is gone. ``metah serve`` supervises its children: one that dies is started again, after a
pause that doubles with each death in a row (from :data:`RESTART_FIRST_S` up to :data:`RESTART_MAX_S`; a child
that lived :data:`RESTART_RESET_S` starts the count again), and each death and restart is logged.

Lanes: the ingest workers claim only ingest jobs, so an uploaded archive is ingested while the other workers
train or activate a model (hours on a CPU).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from service.db import Database
from service.jobs import activation, training
from service.jobs.ingest import KIND as INGEST
from service.jobs.ingest import IngestJob
from service.jobs.worker import Handler, Worker
from service.settings import Settings
from service.storage import BlobStore

log = logging.getLogger(__name__)

PARENT_PID_ENV = "METAH_WORKER_PARENT_PID"
STOP_TIMEOUT_S = 15
SUPERVISE_S = 0.5  # how often metah serve looks at its children
RESTART_FIRST_S, RESTART_MAX_S, RESTART_RESET_S = 1.0, 60.0, 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]
# Settings a worker has no use for, kept out of its environment: it checks no request's key.
NOT_FOR_WORKERS = frozenset({"api_key"})


def handlers() -> dict[str, Handler]:
    """The job kinds a worker runs."""
    return {INGEST: IngestJob(), training.KIND: training.run_training, activation.KIND: activation.run_activation}


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value.resolve())
    return str(value)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that rebuilds ``settings`` in a worker process, less :data:`NOT_FOR_WORKERS`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAH_")}
    for name, value in settings.model_dump(exclude=set(NOT_FOR_WORKERS)).items():
        if value is not None:
            env[f"METAH_{name.upper()}"] = _env_value(value)
    env["METAH_DATABASE_URL"] = settings.sqlalchemy_url
    env["METAH_HOST"] = "127.0.0.1"  # a worker listens nowhere
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env[PARENT_PID_ENV] = str(os.getpid())
    return env


@dataclass
class _Child:
    """One supervised worker: the kinds it claims (``None``: any) and its current process."""

    kinds: tuple[str, ...] | None
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    deaths: int = 0  # in a row, each after less than RESTART_RESET_S
    restart_at: float = 0.0


def worker_command(kinds: Sequence[str] | None) -> list[str]:
    return [sys.executable, "-m", "service.cli", "worker", *(f"--kind={kind}" for kind in kinds or ())]


class WorkerProcesses:
    """``count`` ``metah worker`` children for any job kind, plus (when ``count`` > 0) the settings'
    ``ingest_workers`` for ingest jobs only; started and stopped with the API, restarted when they die."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        lanes = [None] * count + [(INGEST,)] * (settings.ingest_workers if count else 0)
        self.children = [_Child(kinds) for kinds in lanes]
        self._env: dict[str, str] = {}
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The children's current processes."""
        return [child.process for child in self.children if child.process is not None]

    def start(self) -> None:
        if not self.children:
            return
        self._env = settings_env(self.settings)
        for child in self.children:
            self._spawn(child)
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self, child: _Child) -> None:
        child.process = subprocess.Popen(worker_command(child.kinds), env=self._env, cwd=REPO_ROOT)
        child.started = time.monotonic()
        lane = ", ".join(child.kinds) if child.kinds else "any"
        log.info("job worker started (pid %d, jobs: %s)", child.process.pid, lane)

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_S):
            now = time.monotonic()
            for child in self.children:
                if child.process is None:
                    if now >= child.restart_at and not self._stopping.is_set():
                        self._spawn(child)
                    continue
                code = child.process.poll()
                if code is None:
                    continue
                child.deaths = 1 if now - child.started >= RESTART_RESET_S else child.deaths + 1
                pause = min(RESTART_FIRST_S * 2 ** (child.deaths - 1), RESTART_MAX_S)
                log.error(
                    "job worker %d exited with status %d (%d death(s) in a row): restarting it in %.0f s",
                    child.process.pid,
                    code,
                    child.deaths,
                    pause,
                )
                child.process, child.restart_at = None, now + pause

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        processes = self.processes
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("job worker %d did not stop: killing it", process.pid)
                process.kill()
                process.wait()
        for child in self.children:
            child.process = None


def run_worker(settings: Settings, kinds: Sequence[str] | None = None) -> None:
    """The loop of ``metah worker`` until SIGTERM/SIGINT (or, for a child of ``metah serve``, its parent exits);
    ``kinds``: the job kinds it claims (default: any)."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    db = Database(settings.sqlalchemy_url)
    worker = Worker(settings, db, handlers(), kinds)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    parent = os.environ.get(PARENT_PID_ENV)
    stop_indexer = _indexer_candidate(settings, db, worker.store)
    try:
        worker.run_forever(lambda: parent is None or os.getppid() == int(parent))
    finally:
        stop_indexer()
        db.close()


def _indexer_candidate(settings: Settings, db: Database, store: BlobStore) -> Callable[[], None]:
    """On the Milvus backend with a server, every worker is a candidate for the indexer (:mod:`service.indexer`);
    returns what stops it. (Milvus Lite opens in one process only: there ``metah serve`` runs it.)"""
    if settings.index_backend != "milvus" or settings.milvus_lite:
        return lambda: None
    from service.indexer import start_indexer

    return start_indexer(settings, db, store).stop
