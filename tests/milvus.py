"""Milvus for the tests (a pytest plugin, like tests/s3server.py): Milvus Lite and a real standalone server.

``milvus_client``: one Milvus Lite server (a local file) for the session; each test uses its own collections.
``milvus_server``: a Milvus 2.3.5 standalone server (the ``milvus`` wheel of requirements-dev.txt) on 127.0.0.1,
started once per session in a temporary folder (about 20 s) and stopped at the end; ``milvus_server_client``
is a client of it. Tests that use the server are marked ``slow``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class MilvusServer:
    uri: str  # http://127.0.0.1:PORT


@pytest.fixture(scope="session")
def milvus_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Milvus Lite server (a local file) for the session; each test uses its own collections."""
    from pymilvus import MilvusClient

    path: Path = tmp_path_factory.mktemp("milvus") / "lite.db"
    client = MilvusClient(str(path))
    yield client
    client.close()


def _listening_port(start: int) -> int:
    """The first port from ``start`` that no server listens on (below the ephemeral range, so no client socket
    takes it before the server binds it)."""
    for port in range(start, start + 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}..{start + 999}")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """A Milvus 2.3.5 standalone server on 127.0.0.1 (ports chosen free by the wheel), data in a temp folder."""
    milvus = pytest.importorskip("milvus", reason="the milvus==2.3.5 wheel (requirements-dev.txt) runs the server")
    # The wheel's root coordinator port (53100) lies in Linux's ephemeral range (32768-60999), where any client
    # socket may take it between the wheel's probe and the server's bind: it was taken once ("bind: address
    # already in use", the server panicked, the fixture waited 180 s). The wheel's other ports lie below it.
    server = milvus.MilvusServer(wait_for_started=True, root_coord_port=_listening_port(23100))
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    server.start()
    try:
        yield MilvusServer(f"http://127.0.0.1:{server.listen_port}")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_server_client(milvus_server: MilvusServer) -> Iterator[Any]:
    from pymilvus import MilvusClient

    client = MilvusClient(milvus_server.uri)
    yield client
    client.close()
