"""Cluster pseudo-labels: the centroids of the target codes correct a classifier that is wrong on part of them."""

from __future__ import annotations

import pytest
import torch

from model.clusters import centroid_labels, estimate_class_mix, nearest_rows


def _two_clusters() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    centre = torch.zeros(2, 16)
    centre[0, :8], centre[1, 8:] = 1.0, 1.0
    truth = torch.arange(40) % 2
    codes = centre[truth] + 0.3 * torch.randn(40, 16, generator=gen)
    return codes, truth


def test_centroids_fix_the_classifiers_minority_mistakes() -> None:
    codes, truth = _two_clusters()
    logits = torch.zeros(40, 3)
    logits[torch.arange(40), truth] = 1.0
    wrong = torch.arange(0, 40, 5)  # a fifth of the codes: the classifier is sure of the other class
    logits[wrong] = 0.0
    logits[wrong, 1 - truth[wrong]] = 3.0
    assert (logits.argmax(1) != truth).sum() == len(wrong)
    labels = centroid_labels(codes, logits)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, truth)  # class 2, which no code belongs to, takes none


def test_one_round_and_bad_rounds() -> None:
    codes, truth = _two_clusters()
    logits = torch.nn.functional.one_hot(truth, 2).float()
    assert torch.equal(centroid_labels(codes, logits, rounds=1), truth)
    with pytest.raises(ValueError, match="rounds"):
        centroid_labels(codes, logits, rounds=0)


def test_nearest_rows_are_the_most_similar_others_nearest_first_across_chunks() -> None:
    angles = torch.tensor([0.0, 0.1, 0.3, 1.5, 1.6, 3.0])
    points = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * torch.arange(1, 7)[:, None]  # lengths vary
    found = nearest_rows(points, 2, chunk=4)
    assert found.dtype == torch.int64
    assert found.tolist() == [[1, 2], [0, 2], [1, 0], [4, 2], [3, 2], [4, 3]]  # never itself; cosine, not distance
    with pytest.raises(ValueError, match="k must be between 1 and 5"):
        nearest_rows(points, 6)


def test_the_class_mix_estimate_recovers_a_label_shift_from_a_calibrated_classifier() -> None:
    # three 1-d Gaussian classes; the exact posteriors under the source's shares, applied to a target drawn with
    # other shares: EM finds the target's shares, which the posteriors' plain mean does not
    generator = torch.Generator().manual_seed(0)
    centres, source_share = torch.tensor([-2.0, 0.0, 2.0]), torch.tensor([0.2, 0.3, 0.5])
    target_share = torch.tensor([0.6, 0.3, 0.1])
    labels = torch.multinomial(target_share, 20000, replacement=True, generator=generator)
    points = centres[labels] + torch.randn(20000, generator=generator)
    likelihood = torch.exp(-0.5 * (points[:, None] - centres) ** 2)
    posteriors = likelihood * source_share / (likelihood * source_share).sum(dim=1, keepdim=True)
    estimate = estimate_class_mix(posteriors, source_share)
    assert torch.allclose(estimate, target_share, atol=0.02)
    assert float((posteriors.mean(0) - target_share).abs().max()) > 0.05  # the plain mean is biased
    assert float(estimate.sum()) == pytest.approx(1.0, abs=1e-6)


def test_the_class_mix_estimate_keeps_every_class_above_the_floor_and_checks_shapes() -> None:
    sure = torch.tensor([[1.0, 0.0, 0.0]] * 10)  # no row gives the other classes anything
    estimate = estimate_class_mix(sure, torch.full((3,), 1 / 3), floor=0.01)
    assert torch.allclose(estimate, torch.tensor([0.98, 0.01, 0.01]))
    assert float(estimate.sum()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="need probabilities"):
        estimate_class_mix(torch.zeros(0, 3), torch.full((3,), 1 / 3))
    with pytest.raises(ValueError, match="need probabilities"):
        estimate_class_mix(sure, torch.full((4,), 1 / 4))
    with pytest.raises(ValueError, match="floor must be"):
        estimate_class_mix(sure, torch.full((3,), 1 / 3), floor=0.4)
