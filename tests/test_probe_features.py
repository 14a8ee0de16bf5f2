"""The feature probe (``scripts/probe_features.py``): its poolings and its linear probe."""

from __future__ import annotations

import numpy as np
import torch

from scripts.probe_features import POOLINGS, pooled_features, probe


def test_the_poolings_of_a_batch() -> None:
    torch.manual_seed(0)
    head, blocks = torch.rand(2, 1280, 7, 7), torch.randn(2, 320, 7, 7)
    pooled = pooled_features(head, blocks)
    assert list(pooled) == list(POOLINGS)
    assert pooled["head_avg"].shape == (2, 1280) and pooled["blocks_max"].shape == (2, 320)
    torch.testing.assert_close(pooled["blocks_avg"], blocks.mean((2, 3)))
    assert bool((pooled["head_avg"] <= pooled["head_gem"] + 1e-6).all())  # GeM (p = 3) lies between mean and max
    assert bool((pooled["head_gem"] <= pooled["head_max"] + 1e-6).all())


def test_the_probe_reads_a_shifted_domain_only_as_far_as_its_classes_stay_apart() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centres = np.eye(3, 8) * 6.0
    train = centres[labels] + rng.normal(size=(300, 8))
    near = centres[labels] + rng.normal(size=(300, 8)) + 0.5  # a small shift: classes stay apart
    mixed = rng.normal(size=(300, 8)) * 6.0  # nothing of the classes left
    accuracy = probe(train, labels, {"near": (near, labels), "mixed": (mixed, labels)})
    assert accuracy["near"] > 0.9
    assert accuracy["mixed"] < 0.6
