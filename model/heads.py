"""The heads on top of a backbone: hash layer, semantic-preservation classifier, domain discriminator."""

from __future__ import annotations

import torch
from torch import nn

from model.errors import ConfigError

MIN_BITS, MAX_BITS = 16, 128


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a supported code length (16–128, a multiple of 8), else raise ConfigError."""
    if not MIN_BITS <= bits <= MAX_BITS or bits % 8:
        raise ConfigError(f"bits must be a multiple of 8 between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return bits


class HashLayer(nn.Module):
    """Projection (linear, or one hidden ReLU layer then linear) with the tanh relaxation of the sign function.

    Args:
        in_features: width of the backbone's features.
        bits: code length.
        hidden: width of the hidden layer; 0 projects linearly.
        dropout: share of the features zeroed in training (never in the exported projection); 0: none.

    Shape:
        features ``[N, in_features]`` → relaxed codes ``[N, bits]`` in ``(-1, 1)``.
    """

    def __init__(self, in_features: int, bits: int, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.hidden = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True)) if hidden else None
        self.linear = nn.Linear(hidden or in_features, bits)

    def projection(self) -> nn.Module:
        """The part before the tanh: what the exported encoder applies, followed by the sign."""
        return self.linear if self.hidden is None else nn.Sequential(self.hidden, self.linear)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.projection()(self.dropout(features)))


class DomainDiscriminator(nn.Module):
    """MLP telling source (label 1) from target (label 0) codes; returns logits, not probabilities.

    Shape:
        codes ``[N, bits]`` → logits ``[N]``.
    """

    def __init__(self, bits: int, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(bits, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(codes)
        return logits.squeeze(1)
