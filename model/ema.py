"""Exponential moving average (EMA) of a network's weights (Polyak averaging), the copy that gets exported.

One idea, one family of names: :class:`WeightEMA` keeps the average, ``TrainConfig.ema_decay`` is the decay a
run asks for (the key config files, checkpoints and artefacts carry) and ``TrainConfig.applied_ema_decay`` the
one it applies (lowered for short runs).

Adversarial training keeps the codes moving until the last step; the average of the recent weights is meant
as a steadier encoder than the last iterate (``ema_decay = 0`` exports the last iterate; no committed benchmark
compares the two).
"""

from __future__ import annotations

import copy
from typing import Any, Generic, TypeVar

import torch
from torch import nn

Net = TypeVar("Net", bound=nn.Module)


class WeightEMA(Generic[Net]):
    """``avg ← decay·avg + (1−decay)·w`` after every optimiser step, for parameters and float buffers.

    Integer buffers (BatchNorm's batch counter, the GRL step) are copied, not averaged. The first update
    starts from the network's current weights, so there is no warm-up bias towards the initial ones.

    Args:
        net: the network being trained; it is deep-copied once.
        decay: in ``[0, 1)``; the averaging horizon is about ``1 / (1 - decay)`` steps.
    """

    def __init__(self, net: Net, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module: Net = copy.deepcopy(net)
        self.module.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        weight = 1.0 - self.decay if self.updates else 1.0
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*net.parameters(), *net.buffers()]
        for avg, now in zip(averaged, current, strict=True):
            if avg.is_floating_point():
                avg.lerp_(now.detach(), weight)
            else:
                avg.copy_(now)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
