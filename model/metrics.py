"""Hamming-ranking retrieval metrics of the deep-hashing literature (numpy only).

Conventions, stated once for the whole project:

* **Codes** are real arrays of -1.0 / +1.0, shape ``[N, bits]``; bit = value > 0. Any other value is refused.
* **Relevance**: a database item is relevant to a query when both carry the same integer label.
* **Ranking (the tie rule)**: database items are ordered by ascending Hamming distance, and items at the same
  distance by ascending database index. The order is stable and deterministic; it matters because ties are
  the rule, not the exception, in Hamming space, and it changes MAP and precision@k (never the per-radius
  metrics).
* **AP** of one query over a ranked list = mean, over the positions of the relevant items in that list, of the
  precision at that position. **MAP@all** (``map_all``) is the mean AP over queries using the whole database
  ranking; a query with no relevant item in the database has AP 0 and still counts in the mean.
* **Within Hamming radius r** (r = 2 by default), the retrieved list is the ranked prefix of items at distance
  ``<= r`` (the "ball"). **Precision within radius r** (``precision_radius2``) = |relevant ∩ ball| / |ball|,
  **0 when the ball is empty**, averaged over all queries: the definition of the hashing literature's
  evaluation code (TAH, HashNet), and the only one in this project (the PR curve uses it too; see
  :data:`RADIUS_METRICS_NOTE`). ``map_radius2`` = AP over the ball's ranked list, i.e. the sum of precision at
  each relevant position inside the ball divided by the number of relevant items in the ball; 0 when the ball
  is empty or holds no relevant item, averaged over all queries. (The ``radius2`` fields hold the value at
  ``radius``.)
* **precision@k**: fraction of relevant items among the first ``min(k, D)`` of the ranking.
* **PR curve**: for each radius r in ``0..bits``, precision = precision within radius r as above (so the curve's
  point at r = 2 is ``precision_radius2``); recall = mean over queries with at least one relevant item of
  |rel ∩ ball| / |rel| (NaN when no query has a relevant item). Recall is 1 at r = bits.

Queries are processed ``chunk`` at a time, vectorised within a chunk; peak memory is roughly 50-80 bytes per
(query, database) pair of a chunk (about 130-200 MB for ``chunk=256`` and 10,000 database items). A chunk holds
at most :data:`MAX_CHUNK_PAIRS` pairs (fewer queries against a larger database), so that memory does not grow
with the database: 256 queries against 1,000,000 items would otherwise take 13-20 GB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_CHUNK_PAIRS",
    "RADIUS_METRICS_NOTE",
    "PRCurve",
    "RetrievalMetrics",
    "evaluate_retrieval",
    "hamming_distances",
    "hamming_ranking",
]

MAX_CHUNK_PAIRS = 2**22  # (query, database) pairs per chunk: 200-340 MB; 256 queries up to 16,384 items
# The definitions behind the radius columns of every results table (MAP@r≤2, P@r≤2), stated under each table.
RADIUS_METRICS_NOTE = (
    "MAP@r≤2 and P@r≤2: MAP and precision of the items within Hamming radius 2 of each query, averaged over all "
    "queries, a query with an empty ball counting 0 (the definition of TAH's and HashNet's evaluation code)."
)


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall of the Hamming ball, one point per radius.

    Shape:
        radius: int64 ``[bits + 1]`` (``0..bits``);
        precision, recall: float64 ``[bits + 1]`` (recall is NaN when no query has a relevant item).
    """

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    def to_dict(self) -> dict[str, list[int] | list[float | None]]:
        """JSON-ready lists; NaN becomes ``None``."""
        return {
            "radius": [int(r) for r in self.radius],
            "precision": _json_floats(self.precision),
            "recall": _json_floats(self.recall),
        }


@dataclass(frozen=True)
class RetrievalMetrics:
    """Every retrieval number for one (queries, database) pair; definitions in the module docstring."""

    map_all: float
    map_radius2: float
    precision_radius2: float
    precision_at_k: dict[int, float]
    pr_curve: PRCurve
    num_queries: int
    num_database: int
    bits: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the PR curve as lists (NaN as ``None``), ``precision_at_k`` keys as strings."""
        return {
            "map_all": self.map_all,
            "map_radius2": self.map_radius2,
            "precision_radius2": self.precision_radius2,
            "precision_at_k": {str(k): v for k, v in self.precision_at_k.items()},
            "pr_curve": self.pr_curve.to_dict(),
            "num_queries": self.num_queries,
            "num_database": self.num_database,
            "bits": self.bits,
        }


def hamming_distances(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Hamming distance between every query code and every database code.

    Computed as ``(bits - q @ d.T) / 2``. The product runs in float32 (BLAS), which is exact for ±1 entries
    up to 2**24 bits, and the result is stored as int32.

    Args:
        query: ±1 codes.
        database: ±1 codes with the same number of bits.

    Shape:
        query: ``[Q, bits]``, database: ``[D, bits]`` → int32 ``[Q, D]`` with values in ``0..bits``.

    Raises:
        ValueError: wrong rank, empty input, differing bit counts, or a value other than ±1.
    """
    q = _checked_codes(query, "query")
    d = _checked_codes(database, "database")
    _check_same_bits(q, d)
    return _distances(q, d).astype(np.int32, copy=False)


def hamming_ranking(distances: np.ndarray) -> np.ndarray:
    """Database indices of each query ordered by (distance, database index) — the project's tie rule.

    Args:
        distances: integer Hamming distances, e.g. from :func:`hamming_distances`.

    Shape:
        distances: ``[Q, D]`` → int64 ``[Q, D]``; row ``i`` lists database indices, nearest first.

    Raises:
        ValueError: not a 2-D integer array.
    """
    if distances.ndim != 2 or distances.dtype.kind not in "iu":
        raise ValueError(f"distances must be a 2-D integer array, got {distances.dtype} {distances.shape}")
    return _ranking(distances)


def evaluate_retrieval(
    query_codes: np.ndarray,
    query_labels: np.ndarray,
    database_codes: np.ndarray,
    database_labels: np.ndarray,
    *,
    ks: Sequence[int] = (10, 100, 1000),
    radius: int = 2,
    chunk: int = 256,
) -> RetrievalMetrics:
    """Score Hamming retrieval of labelled queries against a labelled database.

    Args:
        query_codes: ±1 query codes.
        query_labels: integer class of each query.
        database_codes: ±1 database codes, same number of bits.
        database_labels: integer class of each database item.
        ks: cut-offs for precision@k (each clipped to the database size; keys keep the value asked for).
        radius: Hamming radius of the ball behind ``map_radius2`` and ``precision_radius2``.
        chunk: queries processed at once (bounds memory, not results); fewer when ``chunk × D`` would pass
            :data:`MAX_CHUNK_PAIRS`.

    Shape:
        query_codes: ``[Q, bits]``, query_labels: ``[Q]``, database_codes: ``[D, bits]``,
        database_labels: ``[D]``.

    Raises:
        ValueError: inconsistent shapes, non-±1 codes, non-integer labels, empty inputs, ``k < 1``,
            ``radius < 0`` or ``chunk < 1``.
    """
    q_codes = _checked_codes(query_codes, "query_codes")
    d_codes = _checked_codes(database_codes, "database_codes")
    _check_same_bits(q_codes, d_codes)
    q_labels, d_labels = _compact_labels(
        _checked_labels(query_labels, q_codes.shape[0], "query_labels"),
        _checked_labels(database_labels, d_codes.shape[0], "database_labels"),
    )
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")

    num_queries, bits = q_codes.shape
    num_database = d_codes.shape[0]
    ball_radius = min(radius, bits)
    cut_offs = {k: min(k, num_database) for k in ks}

    ap_all = ap_ball = 0.0
    hits_at = dict.fromkeys(ks, 0.0)
    pr_precision_sum = np.zeros(bits + 1)
    pr_recall_sum = np.zeros(bits + 1)
    pr_recall_count = 0

    chunk = max(1, min(chunk, MAX_CHUNK_PAIRS // num_database))
    for start in range(0, num_queries, chunk):
        dist = _distances(q_codes[start : start + chunk], d_codes)  # [c, D]
        size = dist.shape[0]
        order = _ranking(dist)  # [c, D]
        relevant = d_labels[order] == q_labels[start : start + chunk, None]  # [c, D], in ranked order
        # Only relevant positions add to AP, so work on them alone: (query row, 0-based rank) pairs,
        # row-major, hence each row's relevant items appear in rank order.
        rows, ranks = np.nonzero(relevant)
        num_relevant = np.bincount(rows, minlength=size)  # [c]
        seen = np.arange(rows.size) - (np.cumsum(num_relevant) - num_relevant)[rows] + 1  # relevant so far
        precision_here = seen / (ranks + 1.0)  # precision at each relevant position

        # Per-radius counts from histograms of the distances: all items, and relevant items only.
        offsets = (bits + 1) * np.arange(size)
        in_ball = _cumulative_histogram((dist + offsets[:, None]).ravel(), size, bits)  # [c, bits + 1]
        relevant_dist = dist[rows, order[rows, ranks]]
        relevant_in_ball = _cumulative_histogram(relevant_dist + offsets[rows], size, bits)  # [c, bits + 1]

        ap_all += float(np.sum(np.bincount(rows, precision_here, size) / np.maximum(num_relevant, 1)))

        ball = in_ball[:, ball_radius]  # [c]; the ball is the first `ball` ranks
        ball_hits = relevant_in_ball[:, ball_radius]  # [c]
        ball_numerator = np.bincount(rows, np.where(ranks < ball[rows], precision_here, 0.0), size)
        ap_ball += float(np.sum(ball_numerator / np.maximum(ball_hits, 1)))  # 0 when no hit in the ball

        for k, cut in cut_offs.items():
            hits_at[k] += int(np.count_nonzero(ranks < cut)) / cut

        pr_precision_sum += np.sum(relevant_in_ball / np.maximum(in_ball, 1), axis=0)  # 0 when the ball is empty
        has_relevant = num_relevant > 0
        pr_recall_sum += np.sum(relevant_in_ball[has_relevant] / num_relevant[has_relevant, None], axis=0)
        pr_recall_count += int(np.sum(has_relevant))

    pr_precision = pr_precision_sum / num_queries  # every query counts, as in precision_radius2
    pr_recall = pr_recall_sum / pr_recall_count if pr_recall_count else np.full(bits + 1, np.nan)
    return RetrievalMetrics(
        map_all=ap_all / num_queries,
        map_radius2=ap_ball / num_queries,
        precision_radius2=float(pr_precision[ball_radius]),  # one definition: the curve's point at radius
        precision_at_k={k: hits / num_queries for k, hits in hits_at.items()},
        pr_curve=PRCurve(
            radius=np.arange(bits + 1, dtype=np.int64),
            precision=pr_precision.astype(np.float64),
            recall=np.asarray(pr_recall, dtype=np.float64),
        ),
        num_queries=num_queries,
        num_database=num_database,
        bits=bits,
    )


def _distances(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Unchecked :func:`hamming_distances` on float32 ±1 codes.

    Shape:
        ``[Q, bits], [D, bits]`` → ``[Q, D]``, int16 when ``bits`` fits (the radix-sortable key), else int32.
    """
    bits = query.shape[1]
    dot = query @ database.T  # exact: integers of magnitude <= bits
    np.subtract(bits, dot, out=dot)
    dot *= 0.5
    return dot.astype(np.int16 if bits <= np.iinfo(np.int16).max else np.int32)


def _cumulative_histogram(bins: np.ndarray, rows: int, bits: int) -> np.ndarray:
    """Per-row counts of distances ``<= r`` for every radius r.

    Shape:
        bins: flat distances already offset by ``row * (bits + 1)`` → int64 ``[rows, bits + 1]``.
    """
    counts = np.bincount(bins, minlength=rows * (bits + 1)).reshape(rows, bits + 1)
    return np.cumsum(counts, axis=1)


def _ranking(distances: np.ndarray) -> np.ndarray:
    """Stable argsort along the database axis; 16-bit keys let numpy use its (linear-time) radix sort."""
    keys = distances
    small = np.iinfo(np.int16)
    if (
        distances.size
        and distances.dtype.itemsize > 2
        and distances.min() >= small.min
        and distances.max() <= small.max
    ):
        keys = distances.astype(np.int16, copy=False)
    return np.argsort(keys, axis=1, kind="stable").astype(np.int64, copy=False)


def _checked_codes(codes: np.ndarray, name: str) -> np.ndarray:
    """Refuse anything but a non-empty 2-D array of ±1; return it as float32 ``[N, bits]``."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, bits], got shape {codes.shape}")
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {codes.shape}")
    if codes.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real numeric array of ±1, got dtype {codes.dtype}")
    if not np.all((codes == 1) | (codes == -1)):
        bad = codes[(codes != 1) & (codes != -1)].ravel()[0]
        raise ValueError(f"{name} must contain only -1.0 and +1.0 (bit = value > 0), found {bad!r}")
    return codes.astype(np.float32, copy=False)


def _check_same_bits(query: np.ndarray, database: np.ndarray) -> None:
    if query.shape[1] != database.shape[1]:
        raise ValueError(f"query codes have {query.shape[1]} bits but database codes have {database.shape[1]} bits")


def _checked_labels(labels: np.ndarray, count: int, name: str) -> np.ndarray:
    """Refuse anything but a 1-D integer array with one label per code."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != count:
        raise ValueError(f"{name} must have shape [{count}], got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
    return labels


def _compact_labels(query: np.ndarray, database: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber labels as int32 ids ``0..C-1`` shared by both sides (a cheaper gather, same equalities)."""
    _, ids = np.unique(np.concatenate([query, database]), return_inverse=True)
    ids = ids.astype(np.int32, copy=False)
    return ids[: query.shape[0]], ids[query.shape[0] :]


def _json_floats(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]
