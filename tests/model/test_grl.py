from __future__ import annotations

import math

import pytest
import torch

from model.grl import GradientReverseLayer, dann_coefficient


def test_dann_schedule_values() -> None:
    assert dann_coefficient(0.0) == 0.0
    assert dann_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_coefficient(7.0) == dann_coefficient(1.0)  # clipped past the end


def test_forward_is_identity_and_backward_reverses_with_the_coefficient() -> None:
    layer = GradientReverseLayer(max_steps=10)
    for _ in range(5):
        layer.advance()
    coeff = 2 / (1 + math.exp(-5)) - 1
    assert layer.coeff == pytest.approx(coeff)
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = layer(x)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad, -coeff * torch.tensor([1.0, 2.0, 3.0]))


def test_step_lives_in_the_state_dict_so_a_resumed_layer_continues() -> None:
    layer = GradientReverseLayer(max_steps=100)
    for _ in range(37):
        layer.advance()
    restored = GradientReverseLayer(max_steps=1)
    restored.load_state_dict(layer.state_dict())
    assert int(restored.step) == 37
    assert restored.coeff == pytest.approx(layer.coeff)


def test_non_positive_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        GradientReverseLayer(max_steps=0)
