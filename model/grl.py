"""Gradient reversal with the DANN schedule, its step kept in a buffer so training resumes exactly."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class GradientReverseFunction(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-coeff`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output.neg() * ctx.coeff, None


def dann_coefficient(progress: float, alpha: float = 10.0) -> float:
    """DANN schedule ``2 / (1 + exp(-alpha * p)) - 1``, rising from 0 at ``p = 0`` towards 1."""
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-alpha * p)) - 1.0


class GradientReverseLayer(nn.Module):
    """Gradient reversal whose coefficient follows :func:`dann_coefficient` of ``step / max_steps``.

    The trainer calls :meth:`advance` once per optimisation step; ``step`` and ``max_steps`` are buffers, so
    they travel with ``state_dict`` and a resumed run continues the schedule where it stopped.

    Shape:
        x: ``[N, *]`` → same shape, same values.
    """

    step: torch.Tensor
    max_steps: torch.Tensor

    def __init__(self, max_steps: int, alpha: float = 10.0) -> None:
        super().__init__()
        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.alpha = alpha
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("max_steps", torch.tensor(max_steps, dtype=torch.int64))

    @property
    def coeff(self) -> float:
        return dann_coefficient(int(self.step) / int(self.max_steps), self.alpha)

    def advance(self) -> None:
        self.step += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = GradientReverseFunction.apply(x, self.coeff)
        return out
