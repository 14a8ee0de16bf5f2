from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.metrics import PRCurve, RetrievalMetrics, evaluate_retrieval, hamming_distances, hamming_ranking
from model.plots import plot_history, plot_pr_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def code_at(distance: int, bits: int = 4, flip_from_end: bool = False) -> list[float]:
    """A ±1 code at ``distance`` from the all-(+1) code: the first (or last) ``distance`` bits set to -1."""
    code = [1.0] * bits
    flipped = range(bits - distance, bits) if flip_from_end else range(distance)
    for i in flipped:
        code[i] = -1.0
    return code


def codes(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# The worked example. Query: all +1 (4 bits), label 0. Database (index: distance, label):
#   0: 2, 0 (rel)   1: 0, 1   2: 1, 0 (rel)   3: 1, 1   4: 4, 1   5: 2, 0 (rel)   6: 3, 0 (rel)
# Ranking by (distance, index): 1(0) 2(1) 3(1) 0(2) 5(2) 6(3) 4(4)
# Relevance along the ranking:  0    1    0    1    1    1    0      -> 4 relevant items
WORKED_DISTANCES = [2, 0, 1, 1, 4, 2, 3]
WORKED_LABELS = [0, 1, 0, 1, 1, 0, 0]


def worked_database() -> tuple[np.ndarray, np.ndarray]:
    return codes(*(code_at(d) for d in WORKED_DISTANCES)), np.array(WORKED_LABELS)


def test_distances_are_bit_disagreements() -> None:
    database, _ = worked_database()
    distances = hamming_distances(codes(code_at(0)), database)
    assert distances.dtype == np.int32
    assert distances.tolist() == [WORKED_DISTANCES]
    # From the all -1 query every distance is mirrored.
    assert hamming_distances(codes(code_at(4)), database).tolist() == [[4 - d for d in WORKED_DISTANCES]]


def test_ranking_orders_by_distance_then_database_index() -> None:
    ranking = hamming_ranking(np.array([WORKED_DISTANCES, [1, 1, 1, 0, 0, 0, 1]]))
    assert ranking.dtype == np.int64
    assert ranking.tolist() == [[1, 2, 3, 0, 5, 6, 4], [3, 4, 5, 0, 1, 2, 6]]


def test_worked_example_by_hand() -> None:
    database, labels = worked_database()
    metrics = evaluate_retrieval(codes(code_at(0)), np.array([0]), database, labels, ks=(1, 2, 3, 10))
    # AP@all: relevant at ranks 2, 4, 5, 6 -> (1/2 + 2/4 + 3/5 + 4/6) / 4 = (34/15) / 4 = 17/30.
    assert metrics.map_all == pytest.approx(17 / 30)
    # Ball of radius 2 = ranks 1..5 (items 1 2 3 0 5), 3 relevant: precision 3/5,
    # AP in the ball = (1/2 + 2/4 + 3/5) / 3 = 8/15 (item 6, at distance 3, is outside).
    assert metrics.precision_radius2 == pytest.approx(3 / 5)
    assert metrics.map_radius2 == pytest.approx(8 / 15)
    # precision@k: ranks 1..k -> 0/1, 1/2, 1/3; k=10 > D=7 is clipped to 7 -> 4/7.
    assert metrics.precision_at_k == pytest.approx({1: 0.0, 2: 1 / 2, 3: 1 / 3, 10: 4 / 7})
    # PR per radius: ball sizes 1, 3, 5, 6, 7 holding 0, 1, 3, 4, 4 relevant items (of 4).
    np.testing.assert_array_equal(metrics.pr_curve.radius, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(metrics.pr_curve.precision, [0 / 1, 1 / 3, 3 / 5, 4 / 6, 4 / 7])
    np.testing.assert_allclose(metrics.pr_curve.recall, [0 / 4, 1 / 4, 3 / 4, 4 / 4, 4 / 4])
    assert (metrics.num_queries, metrics.num_database, metrics.bits) == (1, 7, 4)
    assert all(type(value) is float for value in (metrics.map_all, *metrics.precision_at_k.values()))


def test_tie_order_changes_ap_and_index_order_wins() -> None:
    # Two database items tie at distance 1 (different bits flipped); only one is relevant.
    irrelevant_first = codes(code_at(1), code_at(1, flip_from_end=True))
    query = codes(code_at(0))
    # Index order puts the irrelevant item (index 0) first: AP = 1/2 (relevant at rank 2).
    first = evaluate_retrieval(query, np.array([0]), irrelevant_first, np.array([1, 0]), ks=(1,))
    assert first.map_all == pytest.approx(1 / 2)
    assert first.map_radius2 == pytest.approx(1 / 2)
    assert first.precision_at_k[1] == 0.0
    # Same codes, the relevant item now has the lower index: AP = 1. Only the tie rule differs.
    second = evaluate_retrieval(query, np.array([0]), irrelevant_first, np.array([0, 1]), ks=(1,))
    assert second.map_all == pytest.approx(1.0)
    assert second.precision_at_k[1] == 1.0
    # The per-radius metrics do not depend on tie order.
    assert first.precision_radius2 == second.precision_radius2 == pytest.approx(1 / 2)


def test_empty_ball_counts_zero_and_query_without_relevant_item_has_ap_zero() -> None:
    database, labels = worked_database()
    # Query A: all -1, label 0 -> distances 2 4 3 3 0 2 1; its radius-2 ball is 4(0) 6(1) 0(2) 5(2),
    #   relevance 0 1 1 1.
    # Query B: all +1, label 7, which exists nowhere -> AP 0; non-empty ball with precision 0.
    queries = codes(code_at(4), code_at(0))
    metrics = evaluate_retrieval(queries, np.array([0, 7]), database, labels, ks=(2,))
    # A: ranking 4 6 0 5 2 3 1 -> rel 0 1 1 1 1 0 0; AP = (1/2 + 2/3 + 3/4 + 4/5) / 4 = 163/240.
    # B: AP 0. MAP = 163/480.
    assert metrics.map_all == pytest.approx(163 / 480)
    # A ball (4 items, 3 relevant): precision 3/4, AP (1/2 + 2/3 + 3/4) / 3 = 23/36. B: 0 and 0.
    assert metrics.precision_radius2 == pytest.approx(3 / 8)
    assert metrics.map_radius2 == pytest.approx(23 / 72)
    # Recall ignores B (no relevant item); precision at radius 4 averages A (4/7) and B (0/7).
    assert metrics.pr_curve.recall[-1] == pytest.approx(1.0)
    assert metrics.pr_curve.precision[-1] == pytest.approx(2 / 7)


def test_empty_ball_gives_zero_precision_and_map_within_radius() -> None:
    database = codes(code_at(0), code_at(1))  # both within distance 1 of all +1
    query = codes(code_at(4))  # distances 4 and 3: the radius-2 ball is empty
    metrics = evaluate_retrieval(query, np.array([0]), database, np.array([0, 0]), ks=(1,))
    assert metrics.precision_radius2 == 0.0
    assert metrics.map_radius2 == 0.0
    assert metrics.map_all == pytest.approx(1.0)  # the whole ranking still finds both
    # The ball is empty below radius 3: precision 0 there (the same rule as precision_radius2), recall 0.
    np.testing.assert_allclose(metrics.pr_curve.precision, [0, 0, 0, 1.0, 1.0])
    np.testing.assert_allclose(metrics.pr_curve.recall, [0, 0, 0, 0.5, 1.0])
    as_json = json.loads(json.dumps(metrics.to_dict(), allow_nan=False))
    assert as_json["pr_curve"]["precision"][:3] == [0.0, 0.0, 0.0]
    assert as_json["precision_at_k"] == {"1": 1.0}


def test_precision_within_a_radius_has_one_definition() -> None:
    """Precision within radius r is the same number as the PR curve's point at r: empty balls count 0 in both
    (the definition of TAH's and HashNet's evaluation code), whichever radius is asked for."""
    database = codes(code_at(0), code_at(1), code_at(3))
    labels = np.array([0, 1, 0])
    # Query 0 (all +1): ball sizes 1, 2, 2, 3, 3 by radius. Query 1 (distance 4, 3, 1): empty below radius 1.
    query = codes(code_at(0), code_at(4))
    q_labels = np.array([0, 0])
    precisions = []
    for radius in range(5):
        metrics = evaluate_retrieval(query, q_labels, database, labels, radius=radius, ks=(1,))
        assert metrics.precision_radius2 == pytest.approx(metrics.pr_curve.precision[radius]), radius
        precisions.append(metrics.precision_radius2)
    query_0 = [1 / 1, 1 / 2, 1 / 2, 2 / 3, 2 / 3]
    query_1 = [0.0, 1 / 1, 1 / 1, 1 / 2, 2 / 3]  # its radius-0 ball is empty: 0, not left out of the mean
    np.testing.assert_allclose(precisions, [(a + b) / 2 for a, b in zip(query_0, query_1, strict=True)])


def test_recall_is_nan_when_no_query_has_a_relevant_item() -> None:
    metrics = evaluate_retrieval(codes(code_at(0)), np.array([3]), codes(code_at(1)), np.array([1]))
    assert np.isnan(metrics.pr_curve.recall).all()
    assert metrics.map_all == 0.0
    assert metrics.precision_at_k == {10: 0.0, 100: 0.0, 1000: 0.0}


@pytest.mark.parametrize(
    ("query", "database", "message"),
    [
        (np.zeros((1, 4)), np.ones((2, 4)), "only -1.0 and"),
        (np.ones((1, 4)), np.full((2, 4), 0.5), "only -1.0 and"),
        (np.ones((1, 4)), np.ones((2, 8)), "bits"),
        (np.ones(4), np.ones((2, 4)), "2-D"),
        (np.ones((0, 4)), np.ones((2, 4)), "non-empty"),
        (np.ones((1, 4)), np.ones((0, 4)), "non-empty"),
        (np.ones((1, 4), dtype=bool), np.ones((2, 4)), "numeric"),
        (np.full((1, 4), np.nan), np.ones((2, 4)), "only -1.0 and"),
    ],
)
def test_invalid_codes_are_refused(query: np.ndarray, database: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hamming_distances(query, database)
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(query, np.zeros(len(query), dtype=int), database, np.zeros(len(database), dtype=int))


def test_invalid_labels_and_options_are_refused() -> None:
    q, d = np.ones((2, 4)), np.ones((3, 4))
    good_q, good_d = np.zeros(2, dtype=int), np.zeros(3, dtype=int)
    with pytest.raises(ValueError, match="query_labels"):
        evaluate_retrieval(q, np.zeros(3, dtype=int), d, good_d)
    with pytest.raises(ValueError, match="integers"):
        evaluate_retrieval(q, good_q, d, np.zeros(3))
    with pytest.raises(ValueError, match="k must be"):
        evaluate_retrieval(q, good_q, d, good_d, ks=(0,))
    with pytest.raises(ValueError, match="radius"):
        evaluate_retrieval(q, good_q, d, good_d, radius=-1)
    with pytest.raises(ValueError, match="chunk"):
        evaluate_retrieval(q, good_q, d, good_d, chunk=0)
    with pytest.raises(ValueError, match="integer"):
        hamming_ranking(np.zeros((2, 3)))


def brute_force(
    query: np.ndarray, q_labels: np.ndarray, database: np.ndarray, d_labels: np.ndarray, ks: tuple[int, ...]
) -> RetrievalMetrics:
    """A per-query python-loop oracle written straight from the definitions in model.metrics."""
    bits = query.shape[1]
    maps: list[float] = []
    maps_r: list[float] = []
    precs_r: list[float] = []
    p_at: dict[int, list[float]] = {k: [] for k in ks}
    pr_p: list[list[float]] = [[] for _ in range(bits + 1)]
    pr_r: list[list[float]] = [[] for _ in range(bits + 1)]
    for q, label in zip(query, q_labels, strict=True):
        dist = [int(np.sum(q != d)) for d in database]
        ranked = sorted(range(len(database)), key=lambda j: (dist[j], j))
        rel = [d_labels[j] == label for j in ranked]

        def average_precision(flags: list[bool]) -> float:
            hits, total = 0, 0.0
            for position, flag in enumerate(flags, start=1):
                if flag:
                    hits += 1
                    total += hits / position
            return total / hits if hits else 0.0

        maps.append(average_precision(rel))
        ball = [rel[i] for i, j in enumerate(ranked) if dist[j] <= 2]
        maps_r.append(average_precision(ball))
        precs_r.append(sum(ball) / len(ball) if ball else 0.0)
        for k in ks:
            top = rel[: min(k, len(rel))]
            p_at[k].append(sum(top) / len(top))
        for r in range(bits + 1):
            inside = [rel[i] for i, j in enumerate(ranked) if dist[j] <= r]
            pr_p[r].append(sum(inside) / len(inside) if inside else 0.0)  # an empty ball counts 0
            if sum(rel):
                pr_r[r].append(sum(inside) / sum(rel))
    return RetrievalMetrics(
        map_all=float(np.mean(maps)),
        map_radius2=float(np.mean(maps_r)),
        precision_radius2=float(np.mean(precs_r)),
        precision_at_k={k: float(np.mean(v)) for k, v in p_at.items()},
        pr_curve=PRCurve(
            radius=np.arange(bits + 1),
            precision=np.array([np.mean(v) if v else math.nan for v in pr_p]),
            recall=np.array([np.mean(v) if v else math.nan for v in pr_r]),
        ),
        num_queries=len(query),
        num_database=len(database),
        bits=bits,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_metrics_match_a_brute_force_oracle_on_tie_heavy_codes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bits, num_q, num_d = 8, 23, 61  # 8 bits over 61 items: many ties at every distance
    query = np.where(rng.random((num_q, bits)) < 0.5, -1.0, 1.0)
    database = np.where(rng.random((num_d, bits)) < 0.5, -1.0, 1.0)
    q_labels, d_labels = rng.integers(0, 4, num_q), rng.integers(0, 4, num_d)
    q_labels[0] = 9  # one query without any relevant item
    ks = (1, 5, 20, 100)

    expected = brute_force(query, q_labels, database, d_labels, ks)
    for chunk in (1, 7, 256):  # chunking, including a ragged last chunk, must not change anything
        got = evaluate_retrieval(query, q_labels, database, d_labels, ks=ks, chunk=chunk)
        assert got.map_all == pytest.approx(expected.map_all)
        assert got.map_radius2 == pytest.approx(expected.map_radius2)
        assert got.precision_radius2 == pytest.approx(expected.precision_radius2)
        assert got.precision_at_k == pytest.approx(expected.precision_at_k)
        np.testing.assert_allclose(got.pr_curve.precision, expected.pr_curve.precision)
        np.testing.assert_allclose(got.pr_curve.recall, expected.pr_curve.recall)
        assert (got.num_queries, got.num_database, got.bits) == (num_q, num_d, bits)
        assert got.pr_curve.recall[-1] == pytest.approx(1.0)

    distances = hamming_distances(query, database)
    np.testing.assert_array_equal(distances, (query[:, None, :] != database[None, :, :]).sum(-1))
    expected_order = np.stack([np.lexsort((np.arange(num_d), row)) for row in distances])
    np.testing.assert_array_equal(hamming_ranking(distances), expected_order)


def test_to_dict_is_json_ready() -> None:
    database, labels = worked_database()
    data = evaluate_retrieval(codes(code_at(0)), np.array([0]), database, labels, ks=(3,)).to_dict()
    restored = json.loads(json.dumps(data, allow_nan=False))
    assert restored["map_all"] == pytest.approx(17 / 30)
    assert restored["precision_at_k"] == {"3": pytest.approx(1 / 3)}
    assert restored["pr_curve"]["radius"] == [0, 1, 2, 3, 4]
    assert restored["pr_curve"]["recall"] == pytest.approx([0, 1 / 4, 3 / 4, 1, 1])
    assert (restored["num_queries"], restored["num_database"], restored["bits"]) == (1, 7, 4)


def test_plot_pr_curves_writes_a_png(tmp_path: Path) -> None:
    curve = PRCurve(
        radius=np.arange(5),
        precision=np.array([np.nan, 0.9, 0.7, 0.5, 0.4]),
        recall=np.array([0, 0.2, 0.5, 0.8, 1]),
    )
    path = tmp_path / "plots" / "pr.png"
    plot_pr_curves({"a": curve, "b": curve}, path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="at least one"):
        plot_pr_curves({}, tmp_path / "none.png")


def test_plot_history_writes_a_png_skipping_missing_and_nan_columns(tmp_path: Path) -> None:
    rows = [
        {"step": 10.0, "loss": 2.0, "pairwise": 1.0, "entropy": math.nan, "lr": 1e-3},
        {"step": 20.0, "loss": 1.5, "pairwise": 0.8, "entropy": math.nan, "lr": 1e-3, "adversarial": 0.7},
        {"step": 30.0, "loss": 1.2, "entropy": math.nan, "lr": 5e-4, "adversarial": 0.6},
    ]
    path = tmp_path / "loss.png"
    plot_history(rows, path, title="test")
    assert path.read_bytes().startswith(PNG_MAGIC)
    empty = tmp_path / "empty.png"
    plot_history([], empty)
    assert empty.read_bytes().startswith(PNG_MAGIC)
