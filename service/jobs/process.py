"""Job workers as child processes of ``metah serve`` (``METAH_WORKERS``, default 1), and ``metah worker``.

A child gets the parent's settings through ``METAH_*`` variables, except the API key (a worker answers no
request), and exits when it is told to (SIGTERM: the running job goes back to the queue between batches) or
when its parent is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from service.db import Database
from service.jobs import activation, training
from service.jobs.ingest import KIND as INGEST
from service.jobs.ingest import IngestJob
from service.jobs.worker import Handler, Worker
from service.settings import Settings

log = logging.getLogger(__name__)

PARENT_PID_ENV = "METAH_WORKER_PARENT_PID"
STOP_TIMEOUT_S = 15
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


class WorkerProcesses:
    """``count`` ``metah worker`` children, started and stopped with the API."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        env = settings_env(self.settings)
        for _ in range(self.count):
            process = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env, cwd=REPO_ROOT)
            self.processes.append(process)
            log.info("job worker started (pid %d)", process.pid)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("job worker %d did not stop: killing it", process.pid)
                process.kill()
                process.wait()
        self.processes.clear()


def run_worker(settings: Settings) -> None:
    """The loop of ``metah worker`` until SIGTERM/SIGINT (or, for a child of ``metah serve``, its parent exits)."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    db = Database(settings.sqlalchemy_url)
    worker = Worker(settings, db, handlers())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    parent = os.environ.get(PARENT_PID_ENV)
    try:
        worker.run_forever(lambda: parent is None or os.getppid() == int(parent))
    finally:
        db.close()
