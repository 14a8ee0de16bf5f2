"""Milvus for the tests (a pytest plugin, like tests/s3server.py): Milvus Lite and a real standalone server.

``milvus_client``: one Milvus Lite server (a local file) for the session; each test uses its own collections.
``milvus_server``: a Milvus 2.3.5 standalone server (the ``milvus`` wheel of requirements-dev.txt) on 127.0.0.1,
started once per session in a temporary folder (about 20 s) and stopped at the end; ``milvus_server_client``
is a client of it. Tests that use the server are marked ``slow``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from workbench.milvus import standalone_server


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


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """A Milvus 2.3.5 standalone server on 127.0.0.1 (ports chosen free by the wheel), data in a temp folder."""
    pytest.importorskip("milvus", reason="the milvus==2.3.5 wheel (requirements-dev.txt) runs the server")
    with standalone_server(tmp_path_factory.mktemp("milvus-server")) as uri:
        yield MilvusServer(uri)


@pytest.fixture(scope="session")
def milvus_server_client(milvus_server: MilvusServer) -> Iterator[Any]:
    from pymilvus import MilvusClient

    client = MilvusClient(milvus_server.uri)
    yield client
    client.close()
