"""A Milvus 2.3.5 standalone server on loopback (the ``milvus`` wheel of requirements-dev.txt), for the tests'
fixtures and the benchmarks: about 20 s to start, data in a folder of the caller's."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def listening_port(start: int) -> int:
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


@contextmanager
def standalone_server(base_dir: Path) -> Iterator[str]:
    """A Milvus standalone server with its data under ``base_dir``; yields its URI (``http://127.0.0.1:PORT``)
    and stops it on exit. Raises ``ImportError`` without the ``milvus`` wheel."""
    import milvus

    # The wheel's root coordinator port (53100) lies in Linux's ephemeral range (32768-60999), where any client
    # socket may take it between the wheel's probe and the server's bind: it was taken once ("bind: address
    # already in use", the server panicked, the fixture waited 180 s). The wheel's other ports lie below it.
    server = milvus.MilvusServer(wait_for_started=True, root_coord_port=listening_port(23100))
    server.set_base_dir(str(base_dir))
    server.start()
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()
