"""Per-channel normalisation, the first layer of every network and of the exported encoder.

No ``from __future__ import annotations`` here: TorchScript cannot resolve the string annotations it would make
of the buffer declarations below, and ``torch.jit.script`` of the encoder would fail (export then fell back to
tracing, which freezes every shape-dependent branch).
"""

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel. Shape: ``[N, 3, H, W]`` → same."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
