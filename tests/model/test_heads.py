"""The hash layer's training-only dropout: it drops features while training, never in what is exported."""

from __future__ import annotations

import torch

from model.heads import HashLayer


def test_hash_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    layer = HashLayer(32, 16, dropout=0.5)
    features = torch.randn(8, 32)
    exported = torch.tanh(layer.projection()(features))
    assert torch.equal(layer.eval()(features), exported)
    assert not torch.allclose(layer.train()(features), exported)
    assert set(layer.state_dict()) == set(HashLayer(32, 16).state_dict())  # same checkpoints and artefact
