"""Brute-force references for index tests (numpy only)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from index import Hits, hamming_distances


def knn(
    queries: npt.NDArray[np.uint8], ids: npt.NDArray[np.int64], codes: npt.NDArray[np.uint8], bits: int, k: int
) -> list[Hits]:
    """Exact k-NN in (distance, id) order."""
    distances = hamming_distances(queries, codes, bits)
    out = []
    for row in distances:
        order = np.lexsort((ids, row))[:k]
        out.append(Hits(ids[order], row[order]))
    return out


def within(
    queries: npt.NDArray[np.uint8], ids: npt.NDArray[np.int64], codes: npt.NDArray[np.uint8], bits: int, radius: int
) -> list[Hits]:
    """Every code at distance <= radius, in (distance, id) order."""
    distances = hamming_distances(queries, codes, bits)
    out = []
    for row in distances:
        keep = np.flatnonzero(row <= radius)
        order = np.lexsort((ids[keep], row[keep]))
        out.append(Hits(ids[keep][order], row[keep][order]))
    return out


def assert_same_neighbours(got: Hits, expected: Hits) -> None:
    """Compare like faiss/contrib/evaluation.py: equal distance profile, equal id *sets* per distance below the
    last distance, and at the last distance ids that really are at that distance; then our tie rule (lowest
    ids win, ascending) makes the lists identical."""
    assert np.array_equal(got.distances, expected.distances), (got.distances, expected.distances)
    if len(expected) == 0:
        return
    last = expected.distances[-1]
    for d in np.unique(expected.distances):
        got_ids, want_ids = (
            set(got.ids[got.distances == d].tolist()),
            set(expected.ids[expected.distances == d].tolist()),
        )
        if d < last:
            assert got_ids == want_ids, f"distance {d}: {sorted(got_ids ^ want_ids)[:10]} differ"
    assert np.array_equal(got.ids, expected.ids), "tie rule (distance, id) not respected"
