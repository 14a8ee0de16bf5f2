from __future__ import annotations

import copy
import math

import pytest
import torch

from model.backbones import build_backbone
from model.config import TrainConfig
from model.factory import build_network
from model.grl import GradientReverseLayer, dann_coefficient
from model.losses import adversarial_loss


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


def test_the_network_reverses_the_adversarial_gradient_between_codes_and_discriminator() -> None:
    """The training network puts the GRL between the codes and the discriminator: the adversarial loss's gradient
    that reaches the codes (and so the encoder) is the one the discriminator's input receives times ``-coeff``;
    a descent step of the encoder makes the discriminator's loss rise, one of the discriminator makes it fall."""
    torch.manual_seed(0)
    config = TrainConfig(method="metah", bits=16, backbone="lenet", iterations=10)
    # eval: no dropout noise; float64: the loss changes of a small step stand far above rounding
    net = build_network(config, build_backbone("lenet"), num_classes=10).double().eval()
    for _ in range(5):
        net.heads.grl.advance()
    coeff = net.heads.grl.coeff
    assert net.heads.discriminator is not None and coeff > 0.5
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, tensor: torch.Tensor) -> None:
        tensor.retain_grad()
        seen[name] = tensor

    net.heads.hash.register_forward_hook(lambda _module, _inputs, codes: keep("codes", codes))
    net.heads.discriminator.register_forward_pre_hook(lambda _module, inputs: keep("discriminated", inputs[0]))
    images = torch.rand(8, 3, *build_backbone("lenet").input_size, dtype=torch.float64)
    is_source = torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64)

    def loss_of(network: torch.nn.Module) -> torch.Tensor:
        domain_logits = network(images).domain_logits
        assert domain_logits is not None
        return adversarial_loss(domain_logits, is_source)

    before = loss_of(net)
    before.backward()
    codes_grad, discriminated_grad = seen["codes"].grad, seen["discriminated"].grad
    assert codes_grad is not None and discriminated_grad is not None
    assert discriminated_grad.abs().max() > 1e-4
    assert torch.allclose(codes_grad, -coeff * discriminated_grad, atol=1e-12)

    def after_descent_of(*parts: str) -> float:
        stepped = copy.deepcopy(net)
        with torch.no_grad():
            for (name, parameter), (_, original) in zip(
                stepped.named_parameters(), net.named_parameters(), strict=True
            ):
                if name.startswith(parts) and original.grad is not None:
                    parameter -= 1e-2 * original.grad
        return loss_of(stepped).item()

    assert after_descent_of("heads.discriminator.") < before.item()
    assert after_descent_of("backbone.", "heads.hash.") > before.item()  # the encoder
