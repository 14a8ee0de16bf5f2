"""Search results and the (distance, id) order.

Tie rule, used everywhere in ``index/``: hits are ordered by ascending Hamming distance, then ascending id.
Ties are normal in Hamming space, so "the k nearest" means the first ``k`` codes in that order; with it the
answer is a function of the index contents alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from index.codes import Ids

Distances = npt.NDArray[np.int32]

# Padding for "no hit" in [Q, k] result matrices (FAISS's convention for ids); sorts after every real hit.
NO_ID = -1
NO_DISTANCE = np.iinfo(np.int32).max


@dataclass(frozen=True)
class Hits:
    """The hits of one query.

    Attributes:
        ids: ``int64 [m]``.
        distances: ``int32 [m]`` Hamming distances, ascending; equal distances by ascending id.
    """

    ids: Ids
    distances: Distances

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def pairs(self) -> list[tuple[int, int]]:
        """``[(id, distance), ...]`` as Python ints."""
        return list(zip(self.ids.tolist(), self.distances.tolist(), strict=True))

    @staticmethod
    def empty() -> Hits:
        return Hits(np.empty(0, np.int64), np.empty(0, np.int32))


def order_rows(distances: Distances, ids: Ids) -> tuple[Distances, Ids]:
    """Sort each row of ``[Q, m]`` results by (distance, id); padding (``NO_DISTANCE``) goes last."""
    order = np.lexsort((ids, distances), axis=-1)
    rows = np.arange(distances.shape[0])[:, None]
    return distances[rows, order], ids[rows, order]


def merge_top_k(
    parts: list[tuple[Distances, Ids]], n_queries: int, k: int, *, ordered: bool = False
) -> tuple[Distances, Ids]:
    """Merge per-shard ``[Q, k_i]`` results into the first ``k`` of each row in (distance, id) order.

    Padding entries must carry ``NO_DISTANCE``; the result is ``[Q, min(k, Σ k_i)]``, padded the same way.
    ``ordered``: a single part is already in (distance, id) order (exact flat shards), skip the sort.
    """
    if not parts:
        return np.empty((n_queries, 0), np.int32), np.empty((n_queries, 0), np.int64)
    if len(parts) == 1:
        distances, ids = parts[0]
        if ordered:
            return distances[:, :k], ids[:, :k]
    else:
        distances = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
    distances, ids = order_rows(distances, ids)
    return distances[:, :k], ids[:, :k]


def rows_to_hits(distances: Distances, ids: Ids, max_distance: int | None = None) -> list[Hits]:
    """``[Q, m]`` matrices (padded with ``NO_DISTANCE``) → one :class:`Hits` per row."""
    limit = NO_DISTANCE - 1 if max_distance is None else max_distance
    keep = distances <= limit
    return [Hits(ids[i][keep[i]].copy(), distances[i][keep[i]].copy()) for i in range(distances.shape[0])]


def sort_hits(distances: Distances, ids: Ids) -> Hits:
    """One query's unordered hits → :class:`Hits` in (distance, id) order."""
    order = np.lexsort((ids, distances))
    return Hits(ids[order].astype(np.int64, copy=False), distances[order].astype(np.int32, copy=False))
