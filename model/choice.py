"""``--backbone auto`` and ``--mode auto``: what a run really uses, decided from its data and its device.

* backbone: LeNet (32×32, trained from scratch) when the source images are small, digit-like pictures (the
  median image fits in :data:`SMALL_IMAGE_SIDE` pixels on its longer side); EfficientNet-Lite0 with its ImageNet
  weights otherwise.
* mode: ``frozen`` (backbone features computed once and cached, only the heads train) for a pretrained backbone
  on the CPU; ``finetune`` (the backbone trains too, at ``lr × backbone_lr_mult``) on a GPU, and always for a
  backbone without pretrained weights (its random features are worth nothing frozen).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from model.backbones import Backbone
from model.config import TrainConfig
from model.data import FileSet
from model.errors import ConfigError

SMALL_IMAGE_SIDE = 64
PHOTO_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class Choice:
    """The resolved configuration and a sentence saying why, for the log and the console."""

    config: TrainConfig
    reason: str


def choose_backbone(config: TrainConfig, source: FileSet) -> Choice:
    """Replace ``backbone="auto"`` by LeNet or EfficientNet-Lite0 from the source images' stored sizes."""
    if config.backbone != "auto":
        return Choice(config, f"backbone {config.backbone} (asked for)")
    side = statistics.median(max(width, height) for width, height in source.sizes) if source.sizes else 0
    if side <= SMALL_IMAGE_SIDE:
        reason = f"backbone lenet (auto: the median source image is {side:g} px on its longer side)"
        return Choice(config.override(backbone="lenet"), reason)
    reason = f"backbone {PHOTO_BACKBONE} (auto: the median source image is {side:g} px on its longer side)"
    return Choice(config.override(backbone=PHOTO_BACKBONE), reason)


def choose_mode(config: TrainConfig, backbone: Backbone, device: torch.device) -> Choice:
    """Replace ``mode="auto"``, refuse a frozen backbone that has no pretrained weights, and fill in the mode's
    default length and learning rate where the config leaves them unset (:data:`model.config.MODE_SCHEDULES`)."""
    if config.mode == "frozen" and not backbone.pretrained:
        raise ConfigError(
            f"mode 'frozen' needs a pretrained backbone; {config.backbone} has random weights here "
            "(use --mode finetune, or give --backbone-weights)"
        )
    if config.mode != "auto":
        mode, reason = config.mode, "asked for"
    elif not backbone.pretrained:
        mode, reason = "finetune", "auto: the backbone trains from scratch"
    elif device.type == "cuda":
        mode, reason = "finetune", "auto: pretrained backbone on a GPU"
    else:
        mode, reason = "frozen", "auto: pretrained backbone on the CPU"
    chosen = config.override(mode=mode).scheduled()
    return Choice(chosen, f"mode {mode} ({reason}; {chosen.steps} steps at lr {chosen.learning_rate:g})")
