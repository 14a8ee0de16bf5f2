"""Both :class:`index.protocol.CodeIndex` backends behind one fixture, so the contract tests run on each.

``backend`` is parametrized over ``faiss`` (:class:`index.HashIndex`) and ``milvus`` (:class:`MilvusIndex` on
Milvus Lite: one Lite server per test session, a fresh collection prefix per index, dropped after the test).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from index import HashIndex, IndexOptions
from index.protocol import CodeIndex

_prefixes = itertools.count()


@dataclass
class Backend:
    """Makes indexes of one backend: ``new`` (empty), ``build`` (database rows), ``build_from_batches``."""

    name: str
    client: Any = None  # MilvusClient for "milvus"
    made: list[Any] = field(default_factory=list)

    def _milvus_kwargs(self) -> dict[str, Any]:
        from index.milvus import MilvusOptions

        return {"milvus": MilvusOptions(lite=True, prefix=f"t{next(_prefixes)}")}

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


@pytest.fixture(scope="session")
def milvus_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Milvus Lite server (a local file) for the session; each test uses its own collections."""
    from pymilvus import MilvusClient

    path: Path = tmp_path_factory.mktemp("milvus") / "lite.db"
    client = MilvusClient(str(path))
    yield client
    client.close()


@pytest.fixture(params=["faiss", "milvus"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "faiss":
        yield Backend("faiss")
        return
    made = Backend("milvus", request.getfixturevalue("milvus_client"))
    yield made
    made.drop_all()


def as_code_index(index: Any) -> CodeIndex:
    """The protocol view of an index (a runtime check that it has every member)."""
    assert isinstance(index, CodeIndex)
    return index
