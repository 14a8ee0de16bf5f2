"""``CodeIndex``: what the service needs of an index of packed codes, whatever holds them.

Two implementations: :class:`index.HashIndex` (FAISS, in process, the default) and
:class:`index.milvus.MilvusIndex` (a Milvus collection, shared by processes and machines). The protocol holds
exactly what the service calls: k-NN and radius search, writes, the last database change reflected, counts,
and the code space (``bits``, ``model_version``). Persistence (snapshots), tuning and rebuilds are not in it:
they belong to one backend.

Shapes and conventions as in :mod:`index.codes` and :mod:`index.hits`: codes and queries are packed
``uint8 [N, bits // 8]``, ids are int64 ``>= 0`` chosen by the database, hits come in (distance, id) order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy.typing as npt

from index.hits import Hits


@runtime_checkable
class CodeIndex(Protocol):
    """An index of one code space ``(bits, model_version)``; see :class:`index.HashIndex` for the semantics."""

    @property
    def bits(self) -> int: ...

    @property
    def model_version(self) -> str: ...

    @property
    def last_change(self) -> int:
        """The last database change this index reflects (the largest ``change`` passed to a write)."""
        ...

    def __len__(self) -> int: ...

    def domains(self) -> dict[str, int]:
        """``{domain: number of codes}`` for every non-empty domain."""
        ...

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        domain: str | None = None,
        max_distance: int | None = None,
        model_version: str | None = None,
        wait: bool = True,
    ) -> list[Hits]:
        """The ``k`` nearest codes of each query ``uint8 [Q, B]`` (or one ``[B]``), in (distance, id) order.
        ``wait=False``: :class:`index.IndexBusyError` instead of waiting for a write of this process in progress
        (an index with no such lock never raises it)."""
        ...

    def range_search(
        self, queries: npt.ArrayLike, radius: int, *, domain: str | None = None, model_version: str | None = None
    ) -> list[Hits]:
        """Every code within Hamming distance ``radius`` (inclusive) of each query, in (distance, id) order."""
        ...

    def add(self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, change: int | None = None) -> None:
        """Add new codes; :class:`index.DuplicateIdError` (nothing added) when an id is present already."""
        ...

    def upsert(self, ids: npt.ArrayLike, codes: npt.ArrayLike, domain: str, *, change: int | None = None) -> None:
        """Add codes, replacing any present entry with the same id (in any domain)."""
        ...

    def remove(self, ids: npt.ArrayLike, *, change: int | None = None) -> int:
        """Remove ids (absent ones are ignored); returns how many were present."""
        ...


if TYPE_CHECKING:  # mypy checks here that both backends satisfy the protocol
    from index.hash_index import HashIndex
    from index.milvus import MilvusIndex

    def _backends(faiss: HashIndex, milvus: MilvusIndex) -> tuple[CodeIndex, CodeIndex]:
        return faiss, milvus
