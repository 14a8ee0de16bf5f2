"""Approximate shard: ``IndexBinaryIVF`` (inverted lists over binary k-means centroids).

Why IVF and not HNSW (``scripts/bench_index.py --design``, 1M class-clustered 64-bit codes, k=10, one
thread per query, tie-aware recall; benchmarks/index/design.md, docs/index.md):

* IVF, nlist=1024 (train + add 7.5 s): nprobe 4 → recall 0.9945 at 0.026 ms/query, nprobe 8 → 0.997
  at 0.035 ms, nprobe 16 → 0.9985 at 0.060 ms.
* HNSW, M=32, efConstruction=40 (build 127 s): efSearch 64 → 0.951 at 0.14 ms, efSearch 128 → 0.996 at
  0.35 ms. M=16 (build 57 s) stalls at 0.97.

IVF is ~10x faster at equal recall, builds ~17x faster, and supports ``remove_ids`` and range search;
HNSW would need tombstones plus periodic rebuilds for deletions and has no range search.

Distances of returned hits are exact (the lists keep the full codes); only the candidate set is approximate.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from index.codes import Codes, Ids
from index.hits import Distances, Hits
from index.shard import SortedIds, padded, range_hits

# Training sample per list: FAISS wants >= 39; more barely changes recall on our codes and costs k-means time.
TRAIN_PER_LIST = 64


def default_nlist(n: int, cap: int = 1024) -> int:
    """Lists for ``n`` codes: the power of two nearest ``sqrt(n)``, in ``[16, cap]``.

    1M codes → 1024; the cap keeps the (float) k-means training and the assignment during ``add`` cheap on
    small machines: 10M codes with 1024 lists scan ~10k codes per probed list.
    """
    if n <= 0:
        return 16
    return int(min(cap, max(16, 2 ** round(math.log2(math.sqrt(n))))))


class IVFShard:
    """Approximate Hamming search over one domain. Not thread-safe on its own (see :mod:`index.shard`)."""

    kind = "ivf"
    ordered = False  # list-by-list scan: ties at the k-th distance are not decided by id

    def __init__(
        self,
        bits: int,
        ids: Ids,
        index: faiss.IndexBinaryIVF,
        *,
        nprobe: int,
        trained_size: int,
        backing: object | None = None,
    ) -> None:
        """Wrap a trained IVF index holding exactly ``ids`` (ascending ``int64 [n]``) as its labels.

        ``trained_size``: how many codes the index was built from (to tell when it needs rebuilding).
        """
        if index.ntotal != ids.shape[0]:
            raise ValueError(f"{ids.shape[0]} ids for {index.ntotal} codes")
        self.bits = bits
        self._ids = SortedIds(ids)
        self._index = index
        self._index.nprobe = min(nprobe, index.nlist)
        self.trained_size = trained_size
        self._backing = backing

    @classmethod
    def build(cls, bits: int, ids: Ids, codes: Codes, *, nlist: int | None, nprobe: int, seed: int = 0) -> IVFShard:
        """Train on a sample of ``codes [n, B]`` and add them with ascending ``ids [n]``."""
        n = codes.shape[0]
        lists = nlist or default_nlist(n)
        lists = max(1, min(lists, n))
        quantizer = faiss.IndexBinaryFlat(bits)
        index = faiss.IndexBinaryIVF(quantizer, bits, lists)  # the Python wrapper keeps quantizer alive
        index.cp.seed = seed
        sample = min(n, TRAIN_PER_LIST * lists)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        index.train(np.ascontiguousarray(codes[rows]))
        index.add_with_ids(codes, ids)
        return cls(bits, ids, index, nprobe=nprobe, trained_size=n)

    @property
    def nlist(self) -> int:
        return int(self._index.nlist)

    @property
    def nprobe(self) -> int:
        return int(self._index.nprobe)

    def set_nprobe(self, nprobe: int) -> None:
        """Lists probed per query from now on (call under the index's write lock)."""
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        self._index.nprobe = min(nprobe, self.nlist)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> Ids:
        return self._ids.array

    def contains(self, ids: Ids) -> npt.NDArray[np.bool_]:
        return self._ids.find(ids)[0]

    def search(self, queries: Codes, k: int) -> tuple[Distances, Ids]:
        k = min(k, len(self))
        if k == 0:
            return np.empty((queries.shape[0], 0), np.int32), np.empty((queries.shape[0], 0), np.int64)
        distances, labels = self._index.search(queries, k)
        return padded(distances, labels, None)

    def range_search(self, queries: Codes, radius: int) -> list[Hits]:
        # Strict "< radius" in FAISS; probes index.nprobe lists (IVF range search takes no per-call params).
        lims, distances, labels = self._index.range_search(queries, radius + 1)
        return range_hits(lims, distances, labels, None)

    def own(self) -> None:
        """Copy memory-mapped lists into memory of our own before a write."""
        if self._backing is not None:
            nprobe = self.nprobe
            copy = faiss.deserialize_index_binary(faiss.serialize_index_binary(self._index))
            if not isinstance(copy, faiss.IndexBinaryIVF):
                raise TypeError(f"expected IndexBinaryIVF, got {type(copy).__name__}")
            self._index = copy
            self._index.nprobe = nprobe
            self._ids.replace(self._ids.array.copy())
            self._backing = None

    def add(self, ids: Ids, codes: Codes) -> None:
        self.own()
        self._index.add_with_ids(codes, ids)
        if len(self) == 0 or int(ids[0]) > self._ids.last:
            self._ids.append(ids)
        else:
            self._ids.replace(np.insert(self._ids.array, np.searchsorted(self._ids.array, ids), ids))

    def remove(self, ids: Ids) -> int:
        present, positions = self._ids.find(ids)
        if not present.any():
            return 0
        self.own()
        removed = self._index.remove_ids(faiss.IDSelectorBatch(ids[present]))
        self._ids.replace(np.delete(self._ids.array, positions[present]))
        if removed != int(present.sum()):
            raise RuntimeError(f"removed {removed} codes for {int(present.sum())} ids")
        return int(removed)

    def _lists(self) -> list[tuple[Ids, Codes]]:
        """Zero-copy views ``(ids [m], codes [m, B])`` of every non-empty inverted list."""
        invlists, width, out = self._index.invlists, self.bits // 8, []
        for key in range(self.nlist):
            size = invlists.list_size(key)
            if size:
                ids = faiss.rev_swig_ptr(invlists.get_ids(key), size).view(np.int64)
                codes = faiss.rev_swig_ptr(invlists.get_codes(key), size * width).reshape(size, width)
                out.append((ids, codes))
        return out

    def codes_of(self, ids: Ids) -> Codes:
        # No direct map (it would cost a hash map per code): scan the lists' id arrays, O(n).
        wanted = ids[self.contains(ids)]
        found: dict[int, Codes] = {}
        for list_ids, list_codes in self._lists():
            hit = np.isin(list_ids, wanted)
            for row in np.flatnonzero(hit):
                found[int(list_ids[row])] = list_codes[row].copy()
        width = self.bits // 8
        return np.stack([found[int(i)] for i in wanted]) if wanted.size else np.empty((0, width), np.uint8)

    def export(self) -> tuple[Ids, Codes]:
        parts = self._lists()
        if not parts:
            return np.empty(0, np.int64), np.empty((0, self.bits // 8), np.uint8)
        ids = np.concatenate([p[0] for p in parts])
        codes = np.concatenate([p[1] for p in parts])
        order = np.argsort(ids, kind="stable")
        return ids[order], codes[order]

    def faiss_index(self) -> faiss.IndexBinary:
        return self._index

    def meta(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "trained_size": self.trained_size}

    def nbytes(self) -> int:
        width = self.bits // 8
        return len(self) * (width + 8) + self._ids.nbytes() + self.nlist * width
