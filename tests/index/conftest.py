"""Both :class:`index.protocol.CodeIndex` backends behind one fixture, so the contract tests run on each.

``backend`` is parametrized over ``faiss`` (:class:`index.HashIndex`), ``milvus`` (:class:`MilvusIndex` on
Milvus Lite: one Lite server per test session, a fresh collection prefix per index, dropped after the test)
and, marked slow, ``milvus-server``: a real Milvus 2.3.5 standalone server (the ``milvus`` wheel) that the
session starts on loopback in a temporary folder and stops at the end (about 20 s), with a partition key and
Session consistency (the test client reads its own writes). Both servers' fixtures are in tests/milvus.py.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from index import HashIndex, IndexOptions
from index.protocol import CodeIndex

_prefixes = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The 200k exactness check (``scale``) is a measurement, run on request (``METAH_MILVUS_EXACTNESS_N``): it is
    deselected otherwise, not skipped, since CI counts every skip as a missing backend."""
    if os.environ.get("METAH_MILVUS_EXACTNESS_N"):
        return
    kept = [item for item in items if item.get_closest_marker("scale") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("scale")])
        items[:] = kept


@dataclass
class Backend:
    """Makes indexes of one backend: ``new`` (empty), ``build`` (database rows), ``build_from_batches``."""

    name: str
    client: Any = None  # MilvusClient for "milvus" and "milvus-server"
    made: list[Any] = field(default_factory=list)

    def _milvus_kwargs(self) -> dict[str, Any]:
        return {"milvus": milvus_options(lite=self.name == "milvus", prefix=f"t{next(_prefixes)}")}

    def new(self, bits: int, model_version: str = "m1", options: IndexOptions | None = None) -> Any:
        if self.name == "faiss":
            return HashIndex(bits, model_version, options)
        from index.milvus import MilvusIndex

        index = MilvusIndex(self.client, bits, model_version, options, **self._milvus_kwargs())
        self.made.append(index)
        return index

    def build(self, entries: Iterable[Any], **kwargs: Any) -> Any:
        if self.name == "faiss":
            return HashIndex.build(entries, **kwargs)
        from index.milvus import MilvusIndex

        index = MilvusIndex.build(self.client, entries, **kwargs, **self._milvus_kwargs())
        self.made.append(index)
        return index

    def build_from_batches(self, batches: Iterable[Any], **kwargs: Any) -> Any:
        if self.name == "faiss":
            return HashIndex.build_from_batches(batches, **kwargs)
        from index.milvus import MilvusIndex

        index = MilvusIndex.build_from_batches(self.client, batches, **kwargs, **self._milvus_kwargs())
        self.made.append(index)
        return index

    def drop_all(self) -> None:
        for index in self.made:
            if self.client.has_collection(index.name):
                index.drop()
        self.made.clear()


def milvus_options(*, lite: bool, prefix: str) -> Any:
    """Lite as configured in production; a server with Session consistency, so the test reads its writes."""
    from index.milvus import MilvusOptions

    return MilvusOptions(lite=lite, prefix=prefix, consistency_level="Bounded" if lite else "Session")


@pytest.fixture(params=["faiss", "milvus", pytest.param("milvus-server", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "faiss":
        yield Backend("faiss")
        return
    fixture = "milvus_client" if request.param == "milvus" else "milvus_server_client"
    made = Backend(request.param, request.getfixturevalue(fixture))
    yield made
    made.drop_all()


def as_code_index(index: Any) -> CodeIndex:
    """The protocol view of an index (a runtime check that it has every member)."""
    assert isinstance(index, CodeIndex)
    return index
