"""Fixtures of the HTTP API tests: a tiny real encoder, real uvicorn servers on 127.0.0.1 with a fresh database
per test, and real digit PNGs.

Layers: ``api_artefact`` (session: one tiny trained model) → ``database_url`` (every server test runs twice: on
a SQLite file, and on a fresh PostgreSQL database of :func:`postgres_admin_url`'s server) → ``start_server`` (a
factory: one server per call, all stopped at teardown) → ``server`` / ``client`` (the usual one) →
``digit_pngs`` (image bytes).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from model.config import TrainConfig
from model.train import train
from service.app import create_app
from service.migrate import upgrade
from service.settings import Settings
from tests.conftest import DigitFolders
from workbench.processes import free_port as free_port  # the servers' tests import it from here

API_KEY = "test-key-0123456789"
MAX_UPLOAD = 256 * 1024
MAX_PIXELS = 1_000_000
STARTUP_TIMEOUT_S = 30
# The local cluster's role that scripts/local-postgres.sh makes (and .ci/run uses): it may create databases.
LOCAL_POSTGRES_URL = "postgresql+psycopg://metah:metah@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def api_artefact(digits: DigitFolders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-bit encoder trained for a few seconds on the digit folders."""
    out = tmp_path_factory.mktemp("api-model")
    config = TrainConfig(iterations=30, batch_size=16, bits=16, eval_queries=20)
    return train(config, digits.source, digits.target, out, show_progress=False).paths.model


@pytest.fixture(scope="session")
def second_artefact(digits: DigitFolders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny encoder (32 bits, a few seconds of training) to activate after ``api_artefact``."""
    out = tmp_path_factory.mktemp("second-model")
    config = TrainConfig(iterations=10, batch_size=16, bits=32, eval_queries=20, seed=1)
    return train(config, digits.source, digits.target, out, show_progress=False).paths.model


@pytest.fixture(scope="session")
def digit_pngs(digits: DigitFolders) -> list[tuple[bytes, str]]:
    """``(PNG bytes, label)`` of distinct USPS query digits, in a fixed order (labels cycle 0..9)."""
    by_label = {folder.name: sorted(folder.glob("*.png")) for folder in sorted(digits.query.iterdir())}
    out: list[tuple[bytes, str]] = []
    seen: set[bytes] = set()
    for i in range(max(len(files) for files in by_label.values())):
        for label, files in by_label.items():
            if i < len(files) and (data := files[i].read_bytes()) not in seen:
                seen.add(data)
                out.append((data, label))
    return out


@dataclass
class LiveServer:
    """A uvicorn server running the app in a thread of the test process."""

    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def client(self, api_key: str | None = API_KEY) -> httpx.Client:
        headers = {"X-API-Key": api_key} if api_key is not None else {}
        client = httpx.Client(base_url=self.base_url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(timeout=STARTUP_TIMEOUT_S)
        assert not self.thread.is_alive(), "server did not stop"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server; every field is explicit so no METAH_* variable of the environment leaks in."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": f"sqlite:///{data_dir / 'metah.db'}",
        "api_key": API_KEY,
        "model": None,
        "host": "127.0.0.1",
        "port": 0,
        "max_upload_bytes": MAX_UPLOAD,
        "max_pixels": MAX_PIXELS,
        "workers": 0,  # tests that need a job worker start one
        **overrides,
    }
    return Settings(**values)


def start_live_server(settings: Settings, *, migrate: bool = True) -> LiveServer:
    if migrate:
        upgrade(settings.sqlalchemy_url)
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    return LiveServer(settings, server, thread)


def _may_create_databases(url: str) -> bool:
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            query = "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
            return bool(connection.execute(text(query)).scalar())
    except OperationalError:
        return False
    finally:
        engine.dispose()


@functools.cache
def postgres_admin_url() -> str | None:
    """A PostgreSQL role allowed to create databases: ``METAH_TEST_POSTGRES_URL`` when set, else the local
    cluster's ``metah`` role (as root, ``scripts/local-postgres.sh`` starts an installed cluster and makes the
    role first); ``None`` when there is no PostgreSQL here."""
    if url := os.environ.get("METAH_TEST_POSTGRES_URL"):
        return url
    if _may_create_databases(LOCAL_POSTGRES_URL):
        return LOCAL_POSTGRES_URL
    if os.geteuid() == 0 and shutil.which("pg_ctlcluster"):
        subprocess.run([REPO / "scripts" / "local-postgres.sh"], capture_output=True, timeout=120, check=False)
        if _may_create_databases(LOCAL_POSTGRES_URL):
            return LOCAL_POSTGRES_URL
    return None


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped (with any connection left) afterwards; skipped
    (failed under ``METAH_REQUIRE_ALL_BACKENDS``) when there is no PostgreSQL here."""
    admin_url = postgres_admin_url()
    if admin_url is None:
        pytest.skip(
            f"no PostgreSQL: set METAH_TEST_POSTGRES_URL, or make {LOCAL_POSTGRES_URL} work "
            "(as root: scripts/local-postgres.sh --install)"
        )
    name = f"metah_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(admin, name)
        admin.dispose()


def _drop_database(admin: Engine, name: str, timeout_s: float = 60.0) -> None:
    """``DROP DATABASE … WITH (FORCE)``, tried again while it is refused: an autovacuum worker that happens to
    be on the new database belongs to the superuser, and a non-superuser may not end it (PostgreSQL < 18)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The database of the test's servers: ``None`` (a SQLite file in the data dir), or a fresh PostgreSQL one."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_postgres_database() as url:
        yield url


StartServer = Callable[..., LiveServer]


@pytest.fixture
def start_server(tmp_path: Path, api_artefact: Path, database_url: str | None) -> Iterator[StartServer]:
    """``start_server(data_dir=None, **settings)``: a running server (default: the test's own data dir, the
    tiny model, the test's database); every server started is stopped at teardown."""
    running: list[LiveServer] = []

    def start(data_dir: Path | None = None, *, migrate: bool = True, **overrides: Any) -> LiveServer:
        overrides.setdefault("model", api_artefact)
        if database_url is not None:
            overrides.setdefault("database_url", database_url)
        live = start_live_server(make_settings(data_dir or tmp_path / "data", **overrides), migrate=migrate)
        running.append(live)
        return live

    yield start
    for live in running:
        if live.thread.is_alive():
            live.stop()


@pytest.fixture
def server(start_server: StartServer) -> LiveServer:
    return start_server()


@pytest.fixture
def client(server: LiveServer) -> httpx.Client:
    """A client that sends the API key."""
    return server.client()


@pytest.fixture
def anonymous(server: LiveServer) -> httpx.Client:
    """A client without an API key."""
    return server.client(api_key=None)


def post_image(
    client: httpx.Client,
    data: bytes,
    *,
    label: str | None = None,
    domain: str | None = None,
    metadata: str | None = None,
    filename: str = "digit.png",
) -> httpx.Response:
    """``POST /v1/images`` with the given form fields (only those not ``None`` are sent)."""
    form = {key: value for key, value in (("label", label), ("domain", domain), ("metadata", metadata)) if value}
    return client.post("/v1/images", files={"image": (filename, data, "image/png")}, data=form)


def search(client: httpx.Client, data: bytes, **params: Any) -> httpx.Response:
    return client.post("/v1/search", files={"image": ("query.png", data, "image/png")}, params=params)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    """Poll ``condition`` every ``poll_s`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(poll_s)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response has ``status`` and the contract's error body (and, if given, that ``code``)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


REPO = Path(__file__).resolve().parents[2]


def metah_environment(**values: str) -> dict[str, str]:
    """This process's environment without any METAH_* variable, plus ``METAH_<key>`` for each keyword."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAH_")}
    return {**env, "OMP_NUM_THREADS": "1", **{f"METAH_{k}": v for k, v in values.items()}}


@dataclass
class ServeRun:
    """A real ``metah serve`` subprocess; ``output`` holds its whole log once the block has exited."""

    process: subprocess.Popen[str]
    client: httpx.Client
    output: str = ""


@contextmanager
def running_metah_serve(env: dict[str, str], port: int) -> Iterator[ServeRun]:
    """The real ``metah serve`` as a subprocess, ready (``/readyz`` 200); SIGTERM and wait on exit.

    Its log goes to a file, not a pipe: a pipe nobody reads fills up and stalls the server's logging.
    """
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run: ServeRun | None = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": API_KEY}, timeout=30) as client:
            run = ServeRun(process, client)
            deadline = time.monotonic() + 90
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"metah serve exited with {process.returncode}:\n{log.read()}")
                assert time.monotonic() < deadline, "metah serve did not come up"
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            yield run
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.seek(0)
        if run is not None:
            run.output = log.read()
        log.close()
