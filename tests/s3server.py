"""A real S3 server for the tests: a throw-away single-node Ceph (one monitor, one OSD on ``memstore``, radosgw)
listening on loopback, in a temporary folder, started and stopped by the tests themselves.

Debian's packages provide it (``apt-get install ceph-mon ceph-osd radosgw``; ``.ci/run`` installs them). Without
them :func:`radosgw_or_skip` skips with a reason starting ``backend missing:``.

Also a pytest plugin (``pytest_plugins`` in tests/conftest.py), so that any test may ask for the fixtures
``s3_server`` (one server for the session) and ``s3_environ`` (the standard AWS variables pointing at it), and
make a bucket of its own with :func:`fresh_bucket`.

Notes on the configuration, each learnt the hard way (the one-node settings shared with the compose profile's S3
server are explained in docker/ceph-single-node.conf):

- ``tcp_nodelay=1`` on the beast frontend: without it a small GET takes ~49 ms instead of ~5 ms (Nagle's
  algorithm holding the response's last segment until the client's delayed ACK).
- The S3 user is made before radosgw starts: made after, ``radosgw-admin`` waits on a cache notification
  that a just-started gateway may not answer yet.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from workbench.processes import free_port

BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "ceph", "radosgw", "radosgw-admin")
ACCESS_KEY = "METAHTESTACCESSKEY00"
SECRET_KEY = "metah-test-secret-key-0000000000000000000"
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class S3Server:
    """Where the server listens and who may use it; ``environ`` is what a client process needs (CONTRACT §5)."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    startup_s: float
    pids: tuple[int, ...]

    @property
    def environ(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


SINGLE_NODE_CONF = Path(__file__).resolve().parents[1] / "docker" / "ceph-single-node.conf"


def _config(folder: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    """The shared one-node settings (docker/ceph-single-node.conf, which explains them) plus this server's own."""
    return (
        SINGLE_NODE_CONF.read_text()
        + f"""fsid = {fsid}
mon_host = v2:127.0.0.1:{mon_port}
run_dir = {folder}/run
admin_socket = {folder}/run/$name.asok
log_file = {folder}/log/$name.log
mon_data = {folder}/mon/$id
osd_data = {folder}/osd/$id
osd_objectstore = memstore
memstore_device_bytes = 1073741824
rgw_data = {folder}/rgw
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
"""
    )


class _Cluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "ceph.conf"
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(
            [*args, "-c", str(self.conf)], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}{self.logs()}")
        return result.stdout

    def start(self, name: str, *args: str) -> None:
        log = open(self.folder / "log" / f"{name}.out", "wb")  # noqa: SIM115  # the daemon writes it until stop
        with log:
            daemon = subprocess.Popen([*args, "-f", "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        self.daemons[name] = daemon

    def check_alive(self) -> None:
        for name, daemon in self.daemons.items():
            if daemon.poll() is not None:
                raise RuntimeError(f"{name} exited with {daemon.returncode}{self.logs()}")

    def logs(self) -> str:
        tails = [
            f"\n--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            for path in sorted((self.folder / "log").glob("*"))
        ]
        return "".join(tails)

    def stop(self) -> None:
        """SIGKILL: everything lives in memory (memstore) and in the temporary folder, so nothing to flush."""
        for daemon in reversed(self.daemons.values()):
            with contextlib.suppress(ProcessLookupError):
                daemon.kill()
        for daemon in self.daemons.values():
            daemon.wait(timeout=30)


@contextlib.contextmanager
def radosgw_server(folder: Path) -> Iterator[S3Server]:
    """Start monitor, OSD and radosgw in ``folder`` and make an S3 user; stop them all on exit."""
    started = time.perf_counter()
    for sub in ("run", "log", "mon/a", "osd/0", "rgw"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    fsid, mon_port, rgw_port = str(uuid.uuid4()), free_port(), free_port()
    cluster = _Cluster(folder)
    cluster.conf.write_text(_config(folder, fsid, mon_port, rgw_port))
    try:
        monmap = str(folder / "monmap")
        subprocess.run(
            ["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", "--fsid", fsid, monmap],
            capture_output=True,
            check=True,
        )
        cluster.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        cluster.start("mon", "ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = cluster.run("ceph", "--connect-timeout", "30", "osd", "new", osd_uuid).strip()
        cluster.run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        cluster.start("osd", "ceph-osd", "-i", osd_id)
        # Blocks until the OSD is up and radosgw's pools exist (radosgw-admin makes them).
        cluster.run(
            "radosgw-admin",
            "user",
            "create",
            "--uid=metah",
            "--display-name=metah tests",
            f"--access-key={ACCESS_KEY}",
            f"--secret-key={SECRET_KEY}",
            timeout=START_TIMEOUT_S,
        )
        cluster.start("rgw", "radosgw", "-n", "client.rgw.a")
        _wait_for_http(cluster, rgw_port, started + START_TIMEOUT_S)
        yield S3Server(
            endpoint=f"http://127.0.0.1:{rgw_port}",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region="us-east-1",
            startup_s=time.perf_counter() - started,
            pids=tuple(daemon.pid for daemon in cluster.daemons.values()),
        )
    finally:
        cluster.stop()


def answers_http(port: int) -> bool:
    """Something on ``127.0.0.1:port`` answers an HTTP request (any status)."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return connection.recv(12).startswith(b"HTTP/1.1")
    return False


def _wait_for_http(cluster: _Cluster, port: int, deadline: float) -> None:
    while time.perf_counter() < deadline:
        cluster.check_alive()
        if answers_http(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"radosgw did not answer on port {port}{cluster.logs()}")


def require_ceph() -> None:
    """Skip (a failure under ``METAH_REQUIRE_ALL_BACKENDS``) naming the Ceph programs missing here, if any."""
    if missing := missing_binaries():
        pytest.skip(f"backend missing: {', '.join(missing)} (apt-get install ceph-mon ceph-osd radosgw)")


def radosgw_or_skip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The body of a session fixture: the server, or a skip naming the missing programs."""
    require_ceph()
    with radosgw_server(tmp_path_factory.mktemp("ceph")) as server:
        yield server


def fresh_bucket() -> str:
    """A bucket name no other test uses."""
    return f"metah-{uuid.uuid4().hex[:20]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    yield from radosgw_or_skip(tmp_path_factory)


@pytest.fixture
def s3_environ(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The standard AWS variables pointing at the test server, and nothing of this machine's AWS setup (also what
    a ``metah`` subprocess started with this process's environment gets)."""
    for name, value in s3_server.environ.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server
