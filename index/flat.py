"""Exact shard: ``IndexBinaryFlat`` with its positions kept in ascending id order.

Layout: FAISS holds the codes ``uint8 [n, B]``; :class:`SortedIds` holds ``int64 [n]``; row ``i`` of one is
the id of row ``i`` of the other, and ids ascend. That gives, without ``IndexBinaryIDMap2``:

* 8 bytes per code for the id (``IndexBinaryIDMap2`` adds a hash map, ~5x more: see docs/index.md), so the
  flat index stays at ``(B + 8) / B`` of the raw code bytes (2.0x at 64 bits, 1.5x at 128 bits);
* exact (distance, id) order for free: FAISS's flat k-NN keeps, among equal distances, the lowest position
  (scan in position order + id-aware heap), and position order is id order;
* ``O(log n)`` membership and code look-up, and no hash map to rebuild on load or after each removal.

Appends with ids above every present id (the database's increasing ids) cost ``O(m)``; other inserts and
removals rewrite the shard, ``O(n)``, like ``IndexBinaryFlat.remove_ids`` itself.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from index.codes import Codes, Ids
from index.hits import Distances, Hits
from index.shard import SortedIds, padded, range_hits


def _flat_from(bits: int, codes: Codes) -> faiss.IndexBinaryFlat:
    index = faiss.IndexBinaryFlat(bits)
    if codes.shape[0]:
        index.add(codes)
    return index


class FlatShard:
    """Exact Hamming search over one domain. Not thread-safe on its own (see :mod:`index.shard`)."""

    kind = "flat"
    ordered = True  # FAISS's flat k-NN: scan in position order, id-aware heap, sorted output

    def __init__(self, bits: int, ids: Ids, index: faiss.IndexBinaryFlat, backing: object | None = None) -> None:
        """Wrap ``ids`` (ascending ``int64 [n]``) and an index holding their codes in the same order.

        ``backing`` keeps alive the memory that ``index`` or ``ids`` view (a memory map), if any.
        """
        if index.ntotal != ids.shape[0]:
            raise ValueError(f"{ids.shape[0]} ids for {index.ntotal} codes")
        self.bits = bits
        self._ids = SortedIds(ids)
        self._index = index
        self._backing = backing

    @classmethod
    def build(cls, bits: int, ids: Ids, codes: Codes) -> FlatShard:
        """From ascending unique ``ids [n]`` and ``codes [n, B]``."""
        return cls(bits, ids, _flat_from(bits, codes))

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> Ids:
        return self._ids.array

    def _codes(self) -> Codes:
        """Zero-copy ``[n, B]`` view of the FAISS storage; valid until the next change."""
        n, width = self._index.ntotal, self.bits // 8
        if n == 0:
            return np.empty((0, width), np.uint8)
        data = self._index.xb.data()  # type: ignore[attr-defined]  # missing from faiss's stubs
        return faiss.rev_swig_ptr(data, n * width).reshape(n, width)

    def contains(self, ids: Ids) -> npt.NDArray[np.bool_]:
        return self._ids.find(ids)[0]

    def search(self, queries: Codes, k: int) -> tuple[Distances, Ids]:
        k = min(k, len(self))
        if k == 0:
            return np.empty((queries.shape[0], 0), np.int32), np.empty((queries.shape[0], 0), np.int64)
        distances, positions = self._index.search(queries, k)
        return padded(distances, positions, self._ids.array)

    def range_search(self, queries: Codes, radius: int) -> list[Hits]:
        # FAISS's binary range search keeps distance < radius (strict).
        lims, distances, positions = self._index.range_search(queries, radius + 1)
        return range_hits(lims, distances, positions, self._ids.array)

    def own(self) -> None:
        """Copy memory-mapped data into memory of our own before a write."""
        if self._backing is not None:
            self._index = _flat_from(self.bits, self._codes())
            self._ids.replace(self._ids.array.copy())
            self._backing = None

    def add(self, ids: Ids, codes: Codes) -> None:
        self.own()
        if len(self) == 0 or int(ids[0]) > self._ids.last:
            self._index.add(codes)
            self._ids.append(ids)
            return
        positions = np.searchsorted(self._ids.array, ids)
        merged_codes = np.insert(self._codes(), positions, codes, axis=0)
        merged_ids = np.insert(self._ids.array, positions, ids)
        self._index = _flat_from(self.bits, merged_codes)
        self._ids.replace(merged_ids)

    def remove(self, ids: Ids) -> int:
        present, positions = self._ids.find(ids)
        gone = positions[present]
        if gone.size == 0:
            return 0
        self.own()
        removed = self._index.remove_ids(faiss.IDSelectorBatch(gone.astype(np.int64)))
        self._ids.replace(np.delete(self._ids.array, gone))
        if removed != gone.size:  # cannot happen while ids and codes stay in step
            raise RuntimeError(f"removed {removed} codes for {gone.size} ids")
        return int(removed)

    def codes_of(self, ids: Ids) -> Codes:
        present, positions = self._ids.find(ids)
        return self._codes()[positions[present]].copy()

    def export(self) -> tuple[Ids, Codes]:
        return self._ids.array.copy(), self._codes().copy()

    def faiss_index(self) -> faiss.IndexBinary:
        return self._index

    def meta(self) -> dict[str, Any]:
        return {}

    def nbytes(self) -> int:
        return len(self) * (self.bits // 8) + self._ids.nbytes()
