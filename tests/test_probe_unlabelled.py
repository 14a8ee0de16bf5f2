"""The unlabelled-images probe (``scripts/probe_unlabelled.py``): its estimates, scores and report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.probe_unlabelled import (
    ESTIMATES,
    SCORES,
    ensemble_accuracy,
    feature_labels,
    kmeans_from,
    report,
    shares,
    spearman,
    unsupervised_scores,
)


def test_shares_count_every_class_absent_ones_included() -> None:
    assert shares(np.array([0, 0, 2, 2, 2, 2]), 4).tolist() == pytest.approx([1 / 3, 0.0, 2 / 3, 0.0])


def test_kmeans_moves_a_misplaced_start_onto_the_clusters_and_keeps_an_unchosen_centroid() -> None:
    generator = torch.Generator().manual_seed(0)
    around_x = torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(30, 3, generator=generator)
    around_y = torch.tensor([0.0, 1.0, 0.0]) + 0.05 * torch.randn(10, 3, generator=generator)
    # the first start sits between the clusters and takes both, the second is off to one side, the third unused
    starts = torch.tensor([[1.0, 0.9, 0.0], [0.0, 1.0, -1.5], [0.0, 0.0, -1.0]])
    labels = kmeans_from(torch.cat([around_x, around_y]), starts)
    assert labels[:30].unique().tolist() == [0] and labels[30:].unique().tolist() == [1]
    assert 2 not in labels.tolist()


def test_feature_labels_remove_each_domain_s_shift_before_matching_the_source_centroids() -> None:
    source = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
    target = source + torch.tensor([5.0, 5.0])  # the whole target cloud moved: raw matching files all as one class
    found = feature_labels(source, np.array([0, 0, 1, 1]), target, 2)
    assert found["features"].tolist() == [0, 0, 1, 1] and found["features_kmeans"].tolist() == [0, 0, 1, 1]


def test_the_scores_reward_confident_diverse_and_neighbour_consistent_answers() -> None:
    sure = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    unsure = torch.full((4, 2), 0.5)
    pairs = torch.tensor([[1], [0], [3], [2]])  # each row's nearest neighbour is its twin
    crossed = torch.tensor([[2], [3], [0], [1]])
    confident = unsupervised_scores(sure, pairs)
    assert confident["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert confident["information"] == pytest.approx(np.log(2))
    assert confident["agreement"] == 1.0
    assert unsupervised_scores(sure, crossed)["agreement"] == 0.0
    hesitant = unsupervised_scores(unsure, pairs)
    assert hesitant["entropy"] == pytest.approx(np.log(2)) and hesitant["information"] == pytest.approx(0.0, abs=1e-6)


def test_spearman_ranks_rather_than_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 1000, 10_000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_averaging_classifiers_fixes_an_error_that_the_others_do_not_share() -> None:
    labels = np.array([0, 1, 1])
    right = np.array([[0.9, 0.1], [0.2, 0.8], [0.2, 0.8]])
    wrong_once = {s: right.copy() for s in range(3)}
    wrong_once[0][1] = [0.6, 0.4]  # seed 0 alone gets row 1 wrong, mildly
    found = ensemble_accuracy(wrong_once, labels)
    assert found["alone"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert found["averaged 2"] == 1.0 and found["averaged 3"] == 1.0


def test_the_report_gives_each_estimate_its_spread_and_wins_over_equal_shares() -> None:
    l1 = {name: [0.4, 0.6] for name in ESTIMATES} | {"equal": [0.5, 0.5]}
    task = {
        "seeds": [0, 1],
        "l1": l1,
        "ensembles": {"alone": 0.5, "averaged 2": 0.25},
        "selection_runs": [{"seed": 0}, {"seed": 1}],
        "spearman": dict.fromkeys(SCORES, -0.5),
    }
    machine = {"commit": "abc", "date": "2026-12-05", "cpu": "test"}
    results = {"command": "python -m scripts.probe_unlabelled", "machine": machine, "tasks": {"photo-sketch": task}}
    text = report(results)
    assert f"| {ESTIMATES['equal']} | 0.500 ± 0.000 |" in text
    assert f"| {ESTIMATES['classifier']} | 0.500 ± 0.141 (1 of 2) |" in text
    assert "| averaged 2 | 0.250 |" in text
    assert "| score | photo-sketch (2 seeds) |" in text and f"| {SCORES['agreement']} | -0.50 |" in text
