"""What every per-domain shard provides, and the sorted id column they share.

A :class:`Shard` holds the codes of one domain. It is not thread-safe on its own: ``HashIndex`` calls
read-only methods under its read lock and mutating ones under its write lock.

Shards loaded from a snapshot may point into a memory map (``backing``); they copy their data into memory of
their own before the first write (FAISS aborts the process on a write to a viewed vector).
"""

from __future__ import annotations

from typing import Any, Protocol

import faiss
import numpy as np
import numpy.typing as npt

from index.codes import Codes, Ids
from index.hits import NO_DISTANCE, NO_ID, Distances, Hits, sort_hits

# Growth factor of the id column on appends: low, so that memory stays near 8 bytes per code.
_GROWTH = 1.125


class SortedIds:
    """Ascending, unique ``int64`` ids with amortised appends.

    The array may be a read-only view (of a memory map); the first change copies it.
    """

    def __init__(self, ids: Ids) -> None:
        self._buffer = ids
        self._size = int(ids.shape[0])

    @property
    def array(self) -> Ids:
        """``int64 [n]`` view, ascending. Valid until the next change."""
        return self._buffer[: self._size]

    def __len__(self) -> int:
        return self._size

    @property
    def last(self) -> int:
        """The largest id, or -1 when empty."""
        return int(self._buffer[self._size - 1]) if self._size else -1

    def find(self, ids: Ids) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
        """``(present [m], positions [m])``: where each id sits (positions of absent ids are meaningless)."""
        array = self.array
        positions = np.searchsorted(array, ids)
        clipped = np.minimum(positions, max(self._size - 1, 0))
        if not self._size:
            return np.zeros(len(ids), bool), clipped
        return (positions < self._size) & (array[clipped] == ids), clipped

    def append(self, ids: Ids) -> None:
        """Append ids that are all larger than :attr:`last` (ascending)."""
        needed = self._size + ids.shape[0]
        if needed > self._buffer.shape[0] or not self._buffer.flags.writeable:
            grown = np.empty(max(needed, int(self._size * _GROWTH) + 16), np.int64)
            grown[: self._size] = self.array
            self._buffer = grown
        self._buffer[self._size : needed] = ids
        self._size = needed

    def replace(self, ids: Ids) -> None:
        """Replace the whole column (ascending, owned)."""
        self._buffer = ids
        self._size = int(ids.shape[0])

    def nbytes(self) -> int:
        """Bytes in use (logical size)."""
        return self._size * 8


class Shard(Protocol):
    """The codes of one domain. Shapes: queries ``uint8 [Q, B]``, codes ``uint8 [n, B]``; B = bits // 8."""

    kind: str
    ordered: bool  # search() returns rows already in (distance, id) order

    def __len__(self) -> int: ...

    @property
    def ids(self) -> Ids:
        """``int64 [n]`` ascending. Valid until the next change."""
        ...

    def contains(self, ids: Ids) -> npt.NDArray[np.bool_]:
        """``bool [m]``."""
        ...

    def search(self, queries: Codes, k: int) -> tuple[Distances, Ids]:
        """``[Q, min(k, n)]`` distances and ids in (distance, id) order, padded with NO_DISTANCE / NO_ID."""
        ...

    def range_search(self, queries: Codes, radius: int) -> list[Hits]:
        """Hits with distance ``<= radius``, one :class:`Hits` per query."""
        ...

    def add(self, ids: Ids, codes: Codes) -> None:
        """Add new ids (ascending, none present) with their codes ``[m, B]``."""
        ...

    def remove(self, ids: Ids) -> int:
        """Remove those of ``ids`` that are present; returns how many."""
        ...

    def codes_of(self, ids: Ids) -> Codes:
        """Codes ``[m, B]`` of ids that are present, in the given order."""
        ...

    def export(self) -> tuple[Ids, Codes]:
        """Copies: ids ascending ``[n]`` and their codes ``[n, B]``."""
        ...

    def faiss_index(self) -> faiss.IndexBinary:
        """The FAISS index to serialise (read-only use)."""
        ...

    def own(self) -> None:
        """Copy memory-mapped data into memory of the shard's own (done before every write)."""
        ...

    def meta(self) -> dict[str, Any]:
        """Shard-specific fields for the snapshot manifest."""
        ...

    def nbytes(self) -> int:
        """Approximate bytes of memory held (codes, ids, lists, centroids)."""
        ...


def range_hits(
    lims: npt.NDArray[Any], distances: npt.NDArray[Any], labels: npt.NDArray[Any], id_of: Ids | None
) -> list[Hits]:
    """Split a FAISS range-search result into per-query :class:`Hits`.

    Args:
        lims: ``[Q + 1]`` offsets; query ``i`` owns ``[lims[i], lims[i + 1])``.
        distances, labels: ``[total]``.
        id_of: maps FAISS labels (positions) to ids; ``None`` when the labels are ids already.
    """
    ids = labels.astype(np.int64, copy=False) if id_of is None else id_of[labels]
    dist = distances.astype(np.int32, copy=False)
    return [sort_hits(dist[lims[i] : lims[i + 1]], ids[lims[i] : lims[i + 1]]) for i in range(len(lims) - 1)]


def padded(distances: npt.NDArray[Any], labels: npt.NDArray[Any], id_of: Ids | None) -> tuple[Distances, Ids]:
    """FAISS ``[Q, k]`` result (labels ``-1`` where missing) → ids with ``NO_DISTANCE`` padding."""
    missing = labels < 0
    ids = labels.astype(np.int64, copy=True) if id_of is None else id_of[np.where(missing, 0, labels)]
    dist = distances.astype(np.int32, copy=True)
    if missing.any():
        ids[missing] = NO_ID
        dist[missing] = NO_DISTANCE
    return dist, ids
