"""The MeTAH network (training) and the encoder that is exported from it (serving).

``MeTAHNet.forward`` always returns a :class:`NetOutput`, in train and eval mode alike; the only thing
ever exported is :class:`Encoder`, which shares the normalisation, backbone and hash projection.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from model.backbones import Backbone
from model.grl import GradientReverseLayer
from model.heads import DomainDiscriminator, HashLayer
from model.normalize import Normalize


class NetOutput(NamedTuple):
    """Shape: codes ``[N, bits]`` in (-1, 1); class_logits ``[N, C]``; domain_logits ``[N]``."""

    codes: torch.Tensor
    class_logits: torch.Tensor | None
    domain_logits: torch.Tensor | None


class Encoder(nn.Module):
    """Images to binary codes: the exported artefact.

    Shape:
        x: float32 ``[N, 3, H, W]`` RGB in ``[0, 1]`` → float32 ``[N, bits]``, every value -1.0 or +1.0
        (bit = value > 0; a pre-activation of exactly 0 maps to -1).
    """

    def __init__(self, normalize: Normalize, backbone: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.projection = projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projection(self.backbone(self.normalize(x)))
        return torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))


class Heads(nn.Module):
    """Everything above the backbone: hash layer, semantic classifier, GRL-guarded domain discriminator.

    Trained alone on cached backbone features in the ``frozen`` mode; inside :class:`MeTAHNet` otherwise.

    Args:
        in_features: width of the backbone's features.
        bits: code length (16–128, multiple of 8).
        num_classes: source classes (size of the classifier).
        classifier: build the semantic-preservation classifier (MeTAH).
        discriminator: build the domain discriminator behind a gradient reversal layer (TAH, MeTAH).
        max_steps: length of the GRL schedule (the training iterations).
        grl_alpha: steepness of the GRL's coefficient schedule.
        hidden: width of the hash layer's hidden layer; 0 projects linearly.
        dropout: share of the features the hash layer drops in training.
        conditional: the discriminator reads each code multiplied by the classifier's (detached) class
            probabilities, ``p ⊗ h`` (CDAN, Long et al., NeurIPS 2018), so it aligns the domains class by class.

    Shape:
        features: float32 ``[N, in_features]`` → :class:`NetOutput`.
    """

    def __init__(
        self,
        in_features: int,
        bits: int,
        num_classes: int,
        *,
        classifier: bool,
        discriminator: bool,
        max_steps: int,
        grl_alpha: float = 10.0,
        hidden: int = 0,
        dropout: float = 0.0,
        conditional: bool = False,
    ) -> None:
        super().__init__()
        if conditional and not (classifier and discriminator):
            raise ValueError("a conditional discriminator needs the classifier and the discriminator")
        self.hash = HashLayer(in_features, bits, hidden, dropout)
        self.grl = GradientReverseLayer(max_steps, grl_alpha)
        self.classifier = nn.Linear(bits, num_classes) if classifier else None
        self.conditional = conditional
        self.discriminator = DomainDiscriminator(bits * (num_classes if conditional else 1)) if discriminator else None

    def forward(self, features: torch.Tensor) -> NetOutput:
        codes = self.hash(features)
        class_logits = self.classifier(codes) if self.classifier is not None else None
        domain_logits = None
        if self.discriminator is not None:
            reversed_codes = self.grl(codes)
            if self.conditional:
                assert class_logits is not None
                probabilities = torch.softmax(class_logits.detach(), dim=1)
                reversed_codes = (probabilities.unsqueeze(2) * reversed_codes.unsqueeze(1)).flatten(1)
            domain_logits = self.discriminator(reversed_codes)
        return NetOutput(codes, class_logits, domain_logits)


class MeTAHNet(nn.Module):
    """Normalisation → backbone → :class:`Heads`.

    Args:
        normalize: the backbone's input normalisation.
        backbone: the feature extractor (:attr:`model.backbones.Backbone.module`).
        heads: the hash layer and the training-only heads above it.

    Shape:
        x: float32 ``[N, 3, H, W]`` in ``[0, 1]`` → :class:`NetOutput`.
    """

    def __init__(self, normalize: Normalize, backbone: nn.Module, heads: Heads) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.heads = heads

    @classmethod
    def build(cls, backbone: Backbone, heads: Heads) -> MeTAHNet:
        return cls(Normalize(backbone.mean, backbone.std), backbone.module, heads)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of ``[0, 1]`` images: ``[N, 3, H, W]`` → ``[N, out_features]``."""
        features: torch.Tensor = self.backbone(self.normalize(x))
        return features

    def forward(self, x: torch.Tensor) -> NetOutput:
        out: NetOutput = self.heads(self.features(x))
        return out

    def encoder(self) -> Encoder:
        """The exportable part, sharing this network's modules (no copy)."""
        return Encoder(self.normalize, self.backbone, self.heads.hash.projection())

    def with_heads(self, heads: Heads) -> MeTAHNet:
        """A network sharing this one's normalisation and backbone, with other heads (the averaged ones)."""
        return MeTAHNet(self.normalize, self.backbone, heads)
