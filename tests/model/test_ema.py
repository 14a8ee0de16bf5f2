"""The moving average of the weights that training exports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.ema import WeightEMA


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.0, 4.0]))
        self.register_buffer("counter", torch.zeros((), dtype=torch.int64))
        self.register_buffer("running", torch.tensor([1.0]))


def test_first_update_copies_then_each_step_moves_by_one_minus_decay() -> None:
    net = Tiny()
    average = WeightEMA(net, decay=0.75)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([8.0, 8.0]))
    average.update(net)  # starts from the current weights, not the initial ones
    assert average.module.weight.tolist() == [8.0, 8.0]
    with torch.no_grad():
        net.weight.copy_(torch.tensor([0.0, 16.0]))
        net.running.fill_(5.0)
        net.counter.fill_(7)
    average.update(net)
    assert average.module.weight.tolist() == [6.0, 10.0]  # 0.75 * 8 + 0.25 * new
    assert average.module.running.tolist() == [2.0]  # float buffers are averaged: 0.75 * 1 + 0.25 * 5
    assert int(average.module.counter) == 7  # integer buffers are copied
    assert not average.module.weight.requires_grad


def test_the_average_does_not_touch_the_trained_network_and_its_state_round_trips() -> None:
    net = Tiny()
    average = WeightEMA(net, decay=0.5)
    average.update(net)
    with torch.no_grad():
        net.weight.add_(2.0)
    average.update(net)
    assert net.weight.tolist() == [2.0, 6.0]
    restored = WeightEMA(Tiny(), decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.module.weight.tolist() == [1.0, 5.0] and restored.updates == 2


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_decay_outside_zero_one_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(Tiny(), decay=decay)
