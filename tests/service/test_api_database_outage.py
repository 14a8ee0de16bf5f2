"""PostgreSQL goes away while the API runs: readiness turns 503, writes fail with a clear error and leave
nothing behind, and the service recovers by itself when the database is back.

The outage is a TCP proxy between the server and PostgreSQL that the test closes (every connection refused
or cut, as when the server stops) and reopens; the real server stays up for the other tests.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.service.conftest import StartServer, assert_error, fresh_postgres_database, post_image, search


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``upstream`` until :meth:`cut`; :meth:`restore` listens again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                # shutdown() wakes the thread blocked in accept(); close() alone would let it take one more.
                _shut(self._listener)
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                _shut(sock)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shut(source)
            _shut(sink)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def database_url() -> None:
    """Not run once per backend: this test is about PostgreSQL and brings its own database."""
    return


@pytest.fixture
def proxied_postgres() -> Iterator[tuple[TcpProxy, str]]:
    """``(proxy, url)``: a fresh PostgreSQL database reached through a proxy the test can cut."""
    with fresh_postgres_database() as url:
        parsed = make_url(url)
        proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
        proxy.restore()
        yield proxy, parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        proxy.cut()


def wait_status(client: httpx.Client, path: str, status: int, timeout_s: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while (response := client.get(path)).status_code != status:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
    return response


def test_a_database_outage_is_reported_and_survived(
    proxied_postgres: tuple[TcpProxy, str], start_server: StartServer, digit_pngs: list[tuple[bytes, str]]
) -> None:
    proxy, url = proxied_postgres
    server = start_server(database_url=url)
    client = server.client()
    before = post_image(client, digit_pngs[0][0], label=digit_pngs[0][1])
    assert before.status_code == 201

    proxy.cut()
    assert_error(wait_status(client, "/readyz", 503), 503, "database_unavailable")
    assert client.get("/healthz").status_code == 200  # the process itself is fine
    lost = digit_pngs[1][0]
    assert_error(post_image(client, lost), 503, "database_unavailable")
    assert_error(search(client, digit_pngs[0][0]), 503, "database_unavailable")
    assert_error(client.delete(f"/v1/images/{before.json()['id']}"), 503, "database_unavailable")
    stored = [p for p in server.settings.images_dir.rglob("*") if p.is_file()]
    assert len(stored) == 1  # the refused upload left no file behind

    proxy.restore()
    ready = wait_status(client, "/readyz", 200).json()
    assert ready["indexed"] == 1
    again = post_image(client, lost)
    assert again.status_code == 201, again.text
    hits = search(client, digit_pngs[0][0], max_distance=0).json()["hits"]
    assert before.json()["id"] in {hit["id"] for hit in hits}
    assert [i["id"] for i in client.get("/v1/images").json()["items"]] == [before.json()["id"], again.json()["id"]]
