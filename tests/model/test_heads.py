"""The heads above the backbone: the hash layer's training-only dropout, the class-conditional discriminator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.heads import HashLayer
from model.network import Heads


def test_hash_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    layer = HashLayer(32, 16, dropout=0.5)
    features = torch.randn(8, 32)
    exported = torch.tanh(layer.projection()(features))
    assert torch.equal(layer.eval()(features), exported)
    assert not torch.allclose(layer.train()(features), exported)
    assert set(layer.state_dict()) == set(HashLayer(32, 16).state_dict())  # same checkpoints and artefact


def test_a_conditional_discriminator_reads_codes_times_class_probabilities() -> None:
    torch.manual_seed(0)
    heads = Heads(32, 16, 5, classifier=True, discriminator=True, max_steps=10, conditional=True)
    assert heads.discriminator is not None
    assert heads.discriminator.layers[0].in_features == 16 * 5
    heads.grl.advance()  # a non-zero reversal coefficient
    out = heads(torch.randn(6, 32))
    assert out.domain_logits is not None
    assert out.domain_logits.shape == (6,)
    F.binary_cross_entropy_with_logits(out.domain_logits, torch.ones(6)).backward()
    # the adversary moves the codes (through the reversal) but never the classifier: its answers are detached
    assert heads.classifier is not None
    assert heads.classifier.weight.grad is None
    assert heads.hash.linear.weight.grad is not None
    assert float(heads.hash.linear.weight.grad.abs().sum()) > 0


def test_a_conditional_discriminator_needs_the_classifier() -> None:
    with pytest.raises(ValueError, match="needs the classifier and the discriminator"):
        Heads(32, 16, 5, classifier=False, discriminator=True, max_steps=10, conditional=True)
