"""Build networks from a configuration, and rebuild the artefact from a checkpoint (``metah export``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.backbones import Backbone, build_backbone
from model.checkpoint import load_checkpoint
from model.config import TrainConfig
from model.errors import CheckpointError
from model.export import export_encoder, new_model_version, utc_now
from model.network import Heads, MeTAHNet


def load_backbone(config: TrainConfig) -> Backbone:
    return build_backbone(config.backbone, Path(config.backbone_weights) if config.backbone_weights else None)


def build_network(config: TrainConfig, backbone: Backbone, num_classes: int) -> MeTAHNet:
    weights = config.weights
    heads = Heads(
        backbone.out_features,
        config.bits,
        num_classes,
        classifier=weights.needs_classifier,
        discriminator=weights.needs_discriminator,
        max_steps=config.steps,
        grl_alpha=config.grl_alpha,
        hidden=config.hash_hidden,
        dropout=config.hash_dropout,
        conditional=weights.conditions_adversary,
    )
    return MeTAHNet.build(backbone, heads)


@dataclass(frozen=True)
class RestoredRun:
    """A checkpoint's network with its weights loaded, and what it was built from."""

    saved: dict[str, Any]
    config: TrainConfig
    classes: list[str]
    backbone: Backbone
    net: MeTAHNet


def restore_network(checkpoint_path: Path) -> RestoredRun:
    """Rebuild the network a checkpoint describes and load the weights it exports (CheckpointError on a mismatch).

    Those are the moving average of the weights when the run kept one (``ema_decay > 0``), else the last step's;
    a frozen run averaged only its heads, and its backbone is the pretrained one it was saved with.
    """
    saved = load_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(saved["config"]).validated()
    classes = [str(name) for name in saved["classes"]]
    # the backbone's weights come from the checkpoint, never from the pretrained file again
    backbone = build_backbone(config.backbone)
    net = build_network(config, backbone, len(classes))
    try:
        net.load_state_dict(saved["model"])
        average = saved.get("average")
        if isinstance(average, dict):  # a frozen run averaged only its heads
            (net.heads if saved.get("average_of") == "heads" else net).load_state_dict(average["module"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {str(checkpoint_path)!r} does not match its own configuration") from exc
    return RestoredRun(saved, config, classes, backbone, net)


def export_checkpoint(checkpoint_path: Path, out_path: Path) -> dict[str, Any]:
    """Rebuild the network a checkpoint describes, load its weights and export the encoder artefact.

    Returns the artefact's metadata. A checkpoint saved mid-run exports the encoder as it was then.
    """
    restored = restore_network(checkpoint_path)
    saved, config, classes, backbone = restored.saved, restored.config, restored.classes, restored.backbone
    encoder = restored.net.encoder()
    created_at = utc_now()
    previous: dict[str, Any] = dict(saved.get("metadata") or {})
    metadata = {
        **previous,
        "bits": config.bits,
        "input_size": list(backbone.input_size),
        "backbone": config.backbone,
        "method": config.method,
        "classes": classes,
        "model_version": previous.get("model_version")
        or new_model_version(config.method, config.bits, encoder, created_at),
        "created_at": previous.get("created_at") or created_at.isoformat(),
        "metrics": previous.get("metrics", {}),
        "config": config.to_dict(),
        "step": int(saved["step"]),
    }
    export_encoder(encoder, metadata, out_path)
    return metadata
