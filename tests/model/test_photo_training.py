"""Photos: auto backbone and mode, the frozen feature cache, streaming, fine-tuning's learning rates.

Real PACS photos and sketches from the repo's ``data/pacs`` subset, the real EfficientNet-Lite0 with its shipped
ImageNet weights, a few dozen images and steps per run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from model import backbones
from model.backbones import build_backbone
from model.batches import InMemoryImages, StreamedImages
from model.choice import choose_backbone, choose_mode
from model.config import TrainConfig
from model.data import list_labelled_folder, list_unlabelled_folder
from model.distributed import ProcessGroup
from model.errors import ConfigError
from model.evaluate import encode_files
from model.export import load_encoder
from model.factory import RestoredRun, restore_network
from model.features import FeatureCache, FeatureTable, adapt_batch_norm, extract_features
from model.normalize import Normalize
from model.objective import LossWeights
from model.preprocess import decode_image
from model.train import EvalSets, RunPaths, Trainer, prepare_data, train
from tests.conftest import DigitFolders
from workbench.processes import torchrun_command

PACS = Path(__file__).resolve().parents[2] / "data" / "pacs"
CLASSES = ("dog", "giraffe", "house")


def _sample(domain: str, per_class: int, out: Path, labelled: bool) -> Path:
    for name in CLASSES:
        files = sorted((PACS / domain / name).iterdir())[:per_class]
        folder = out / name if labelled else out
        folder.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copyfile(path, folder / f"{name}_{path.name}")
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pacs")
    return {
        "source": _sample("photo", 6, root / "photo", labelled=True),
        "target": _sample("sketch", 4, root / "sketch", labelled=False),
        "queries": _sample("sketch", 3, root / "sketch_queries", labelled=True),
    }


FROZEN = TrainConfig(iterations=40, batch_size=8, log_every=5, checkpoint_every=20, eval_queries=6, feature_views=2)


def test_auto_picks_lenet_for_digits_and_lite0_for_photos(digits: DigitFolders, photos: dict[str, Path]) -> None:
    small = choose_backbone(TrainConfig(), list_labelled_folder(digits.source))
    large = choose_backbone(TrainConfig(), list_labelled_folder(photos["source"]))
    assert small.config.backbone == "lenet" and "28 px" in small.reason
    assert large.config.backbone == "efficientnet_lite0" and "227 px" in large.reason
    assert choose_backbone(TrainConfig(backbone="resnet18"), list_labelled_folder(digits.source)).config.backbone == (
        "resnet18"
    )


def test_auto_mode_is_frozen_for_pretrained_on_cpu_finetune_otherwise() -> None:
    lite = build_backbone("efficientnet_lite0")
    lenet = build_backbone("lenet")
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert choose_mode(TrainConfig(), lite, cpu).config.mode == "frozen"
    assert choose_mode(TrainConfig(), lite, cuda).config.mode == "finetune"
    assert choose_mode(TrainConfig(), lenet, cpu).config.mode == "finetune"
    assert choose_mode(TrainConfig(mode="finetune"), lite, cpu).config.mode == "finetune"
    with pytest.raises(ConfigError, match="needs a pretrained backbone"):
        choose_mode(TrainConfig(mode="frozen", backbone="lenet"), lenet, cpu)


def test_the_mode_sets_the_length_and_rate_a_config_leaves_unset() -> None:
    lite = build_backbone("efficientnet_lite0")
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    frozen = choose_mode(TrainConfig(), lite, cpu)
    assert (frozen.config.iterations, frozen.config.lr) == (3600, 3e-3)  # the heads alone: longer and faster
    assert "3600 steps at lr 0.003" in frozen.reason
    finetune = choose_mode(TrainConfig(), lite, cuda).config
    assert (finetune.iterations, finetune.lr) == (1200, 1e-3)
    asked = choose_mode(TrainConfig(iterations=50, lr=0.01), lite, cpu).config
    assert (asked.iterations, asked.lr) == (50, 0.01)  # what a user sets wins in every mode
    assert (TrainConfig(mode="frozen").steps, TrainConfig(mode="finetune").learning_rate) == (3600, 1e-3)
    with pytest.raises(ConfigError, match="unresolved mode 'auto'"):
        _ = TrainConfig().steps
    with pytest.raises(ConfigError, match="unresolved mode 'auto'"):
        _ = TrainConfig().learning_rate
    assert TrainConfig(iterations=7).steps == 7  # set: no mode needed


@pytest.fixture(scope="module")
def frozen_run(photos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("frozen")
    config = FROZEN.override(feature_cache=str(cache))
    train(config, photos["source"], photos["target"], out, eval_sets=EvalSets(photos["queries"]))
    return out, cache


def test_frozen_run_records_its_choices_and_exports_one_artefact(
    frozen_run: tuple[Path, Path], photos: dict[str, Path]
) -> None:
    out, _ = frozen_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["backbone"], metrics["mode"]) == ("efficientnet_lite0", "frozen")
    assert any("auto" in line for line in metrics["choices"])
    loaded = load_encoder(out / "model.pt")
    assert loaded.metadata["backbone"] == "efficientnet_lite0" and loaded.metadata["mode"] == "frozen"
    assert loaded.input_size == (224, 224)
    codes = encode_files(loaded.module, list_unlabelled_folder(photos["target"]), loaded.input_size)
    assert codes.shape == (12, 64) and set(np.unique(codes).tolist()) == {-1.0, 1.0}
    # three classes: chance MAP is about 1/3; the frozen ImageNet features make photos easy to tell apart
    assert metrics["evaluation"]["source_vs_source"]["map_all"] > 0.6


# |projected value| below which a bit may come out either way: the cached features are float16, the artefact
# computes in float32 from the pixels
BORDERLINE = 1e-3


def _assert_same_codes(codes: np.ndarray, restored: RestoredRun, features: torch.Tensor) -> None:
    """``codes`` (the artefact's) are the signs of the run's projection of the cached ``features``, every bit but
    the rare one within ``BORDERLINE`` of zero."""
    with torch.no_grad():
        projected = restored.net.heads.hash.projection()(features).numpy()
    differ = codes != np.where(projected > 0, 1.0, -1.0)
    assert not np.any(differ & (np.abs(projected) >= BORDERLINE))
    assert differ.mean() < 0.01


def test_the_artefact_computes_the_codes_the_run_scored(frozen_run: tuple[Path, Path], photos: dict[str, Path]) -> None:
    """Frozen runs score from cached features; the artefact (backbone + projection) must give the same codes."""
    out, cache_root = frozen_run
    restored = restore_network(out / "checkpoint.pt")
    files = list_labelled_folder(photos["queries"])
    backbone = build_backbone("efficientnet_lite0")
    cache = FeatureCache(cache_root, "efficientnet_lite0", backbone)
    keys, _ = extract_features(files, backbone, cache, 1, device=torch.device("cpu"), workers=0)
    features = torch.cat(list(FeatureTable(cache, keys, 1, 2**30).plain()))
    loaded = load_encoder(out / "model.pt")
    _assert_same_codes(encode_files(loaded.module, files, loaded.input_size), restored, features)


def test_a_frozen_run_on_lite0_blocks_exports_an_artefact_that_computes_its_codes(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    config = FROZEN.override(backbone="efficientnet_lite0_blocks", iterations=10, feature_views=1)
    train(config.override(feature_cache=str(tmp_path / "cache")), photos["source"], photos["target"], tmp_path / "run")
    restored = restore_network(tmp_path / "run" / "checkpoint.pt")
    assert restored.net.heads.hash.linear.in_features == 320
    files = list_labelled_folder(photos["queries"])
    cache = FeatureCache(tmp_path / "cache", "efficientnet_lite0_blocks", restored.backbone)
    keys, _ = extract_features(files, restored.backbone, cache, 1, device=torch.device("cpu"), workers=0)
    features = torch.cat(list(FeatureTable(cache, keys, 1, 2**30).plain()))
    loaded = load_encoder(tmp_path / "run" / "model.pt")
    assert loaded.metadata["backbone"] == "efficientnet_lite0_blocks"
    _assert_same_codes(encode_files(loaded.module, files, loaded.input_size), restored, features)


def test_features_are_computed_in_the_backbones_cpu_passes(
    photos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU, Lite0 runs ``CPU_PASS`` images per forward pass (its fastest per image), not the loader's whole
    batch, and the cached features are those of one pass over the batch."""
    files = list_labelled_folder(photos["queries"])
    backbone = build_backbone("efficientnet_lite0")
    assert backbone.name == "efficientnet_lite0"
    sizes: list[int] = []
    backbone.module.register_forward_hook(lambda _m, args, _out: sizes.append(len(args[0])))
    monkeypatch.setitem(backbones.CPU_PASS, "efficientnet_lite0", 2)
    cache = FeatureCache(tmp_path / "passes", "efficientnet_lite0", backbone)
    keys, _ = extract_features(files, backbone, cache, 2, device=torch.device("cpu"), workers=0, batch_size=3)
    assert sizes and max(sizes) == 2  # 3 images × 2 views per loader batch, in passes of 2
    computed = np.stack([cache.load(key, view) for key in keys for view in (0, 1)]).astype(np.float32)
    monkeypatch.setitem(backbones.CPU_PASS, "efficientnet_lite0", 1024)
    whole = FeatureCache(tmp_path / "whole", "efficientnet_lite0", backbone)
    keys, _ = extract_features(files, backbone, whole, 2, device=torch.device("cpu"), workers=0, batch_size=64)
    assert sizes[-1] == 2 * len(files)  # one pass over the whole loader batch
    expected = np.stack([whole.load(key, view) for key in keys for view in (0, 1)]).astype(np.float32)
    np.testing.assert_allclose(computed, expected, rtol=0, atol=2e-2)


def test_the_feature_cache_is_reused_by_content(
    frozen_run: tuple[Path, Path], photos: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, cache_root = frozen_run
    renamed = tmp_path / "renamed"
    for path in sorted(photos["target"].iterdir()):
        (renamed / "sub").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, renamed / "sub" / f"copy-{path.name}")  # same bytes, other names
    backbone = build_backbone("efficientnet_lite0")
    cache = FeatureCache(cache_root, "efficientnet_lite0", backbone, drawing=TrainConfig().feature_drawing)
    before = sorted(p.name for p in cache.folder.rglob("*.npy"))
    caplog.set_level("INFO", logger="model.features")
    extract_features(list_unlabelled_folder(renamed), backbone, cache, 2, device=torch.device("cpu"), workers=0)
    assert "0 of 12 image(s) computed" in caplog.text
    assert sorted(p.name for p in cache.folder.rglob("*.npy")) == before
    # a run that wants more views computes only the missing ones
    extract_features(list_unlabelled_folder(renamed), backbone, cache, 3, device=torch.device("cpu"), workers=0)
    assert len(list(cache.folder.rglob("*.v2d50.npy"))) == 12


def test_views_are_the_same_in_every_run(photos: dict[str, Path], tmp_path: Path) -> None:
    backbone = build_backbone("efficientnet_lite0")
    files = list_unlabelled_folder(photos["target"]).take(np.arange(2))
    tables = []
    for name in ("a", "b"):
        cache = FeatureCache(tmp_path / name, "efficientnet_lite0", backbone)
        keys, _ = extract_features(files, backbone, cache, 3, device=torch.device("cpu"), workers=0)
        tables.append(FeatureTable(cache, keys, 3, 2**30))
    index, views = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 1, 2])
    assert torch.equal(tables[0].gather(index, views), tables[1].gather(index, views))
    plain, augmented = tables[0].gather(torch.tensor([0]), torch.tensor([0])), tables[0].gather(index[:1], views[:1])
    assert not torch.allclose(plain, augmented)  # view 1 is an augmentation, not the plain image again


def test_greyscale_views_are_cached_apart_and_share_the_plain_view(photos: dict[str, Path], tmp_path: Path) -> None:
    backbone = build_backbone("efficientnet_lite0")
    files = list_labelled_folder(photos["source"]).take(np.arange(2))
    colour = FeatureCache(tmp_path, "efficientnet_lite0", backbone)
    grey = FeatureCache(tmp_path, "efficientnet_lite0", backbone, grey=1.0)
    keys, _ = extract_features(files, backbone, colour, 2, device=torch.device("cpu"), workers=0)
    extract_features(files, backbone, grey, 2, device=torch.device("cpu"), workers=0)
    assert len(list(colour.folder.rglob("*.npy"))) == 6  # per photo: one plain view, a colour and a grey view 1
    for key in keys:
        assert grey.path(key, 0) == colour.path(key, 0)
        assert not np.allclose(grey.load(key, 1), colour.load(key, 1))


def test_drawn_views_are_cached_apart_by_recipe(photos: dict[str, Path], tmp_path: Path) -> None:
    backbone = build_backbone("efficientnet_lite0")
    recipes = [
        FeatureCache(tmp_path, "efficientnet_lite0", backbone, grey=grey, drawing=drawing)
        for grey, drawing in ((0.0, 0.0), (0.0, 0.5), (0.5, 1.0))
    ]
    key = "ab" * 16
    assert [cache.path(key, 1).name for cache in recipes] == [
        f"{key}.v1.npy",
        f"{key}.v1d50.npy",
        f"{key}.v1g50d100.npy",
    ]
    assert {cache.path(key, 0).name for cache in recipes} == {f"{key}.v0.npy"}  # the plain view is shared
    files = list_labelled_folder(photos["source"]).take(np.arange(1))
    keys, _ = extract_features(files, backbone, recipes[0], 2, device=torch.device("cpu"), workers=0)
    extract_features(files, backbone, recipes[2], 2, device=torch.device("cpu"), workers=0)
    assert not np.allclose(recipes[0].load(keys[0], 1), recipes[2].load(keys[0], 1))


def test_cluster_labels_need_the_frozen_mode(photos: dict[str, Path], tmp_path: Path) -> None:
    weights = LossWeights(pairwise=1.0, classification=1.0, cluster=0.3)
    config = TrainConfig(mode="finetune", iterations=2, batch_size=4, loss_weights=weights)
    with pytest.raises(ConfigError, match="cluster loss needs the frozen mode"):
        train(config, photos["source"], photos["target"], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_frozen_run_relabels_its_target_by_clusters_and_resumes_with_the_labels(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    weights = LossWeights(pairwise=1.0, classification=1.0, adversarial=1.0, cluster=0.3)
    config = FROZEN.override(feature_cache=str(tmp_path / "cache"), loss_weights=weights, iterations=40)
    result = train(config, photos["source"], photos["target"], tmp_path / "run")
    rows = [row for row in result.history if "cluster" in row]
    assert rows
    assert min(row["step"] for row in rows) > 10  # from a quarter of the run on
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    guess = saved["target_guess"]
    assert guess.shape == (12,)
    assert guess.dtype == torch.int64
    assert set(guess.tolist()) <= {0, 1, 2}
    resolved = config.override(backbone="efficientnet_lite0", mode="frozen")
    backbone = build_backbone("efficientnet_lite0")
    source, target = list_labelled_folder(photos["source"]), list_unlabelled_folder(photos["target"])
    data = prepare_data(resolved, backbone, source, target, torch.device("cpu"), False)
    trainer = Trainer(resolved, backbone, data, _paths(tmp_path / "again"), _group(), torch.device("cpu"))
    trainer.load_state(saved)
    assert trainer.target_guess is not None
    assert torch.equal(trainer.target_guess, guess)


def test_finetune_trains_a_pretrained_backbone_at_a_tenth_of_the_rate(photos: dict[str, Path], tmp_path: Path) -> None:
    config = TrainConfig(
        backbone="efficientnet_lite0", mode="finetune", iterations=2, batch_size=4, checkpoint_every=1
    ).validated()
    backbone = build_backbone(config.backbone)
    source, target = list_labelled_folder(photos["source"]), list_unlabelled_folder(photos["target"])
    data = prepare_data(config, backbone, source, target, torch.device("cpu"), show_progress=False)
    assert isinstance(data.inputs, InMemoryImages)  # 30 photos fit the memory budget
    trainer = Trainer(config, backbone, data, _paths(tmp_path), _group(), torch.device("cpu"))
    groups = trainer.optimizer.param_groups
    assert [group["lr"] for group in groups] == pytest.approx([1e-4, 1e-3])  # the finetune default, and a tenth
    before = trainer.net.backbone.conv_stem.weight.detach().clone()
    trainer.run(show_progress=False)
    assert not torch.equal(before, trainer.net.backbone.conv_stem.weight)  # the backbone trained too
    lenet = build_backbone("lenet")
    digits_trainer = Trainer(
        config.override(backbone="lenet"), lenet, data, _paths(tmp_path), _group(), torch.device("cpu")
    )
    assert len({group["lr"] for group in digits_trainer.optimizer.param_groups}) == 1  # from scratch: one rate


def test_large_sets_stream_from_disk_through_loader_workers(digits: DigitFolders, tmp_path: Path) -> None:
    config = TrainConfig(iterations=12, batch_size=8, memory_budget_mb=1, loader_workers=1, eval_queries=20)
    result = train(config, digits.source, digits.target, tmp_path / "run")
    assert result.metrics["mode"] == "finetune" and result.metrics["backbone"] == "lenet"
    backbone = build_backbone("lenet")
    source, target = list_labelled_folder(digits.source), list_unlabelled_folder(digits.target)
    data = prepare_data(
        config.override(backbone="lenet", mode="finetune"),
        backbone,
        source,
        target,
        torch.device("cpu"),
        show_progress=False,
    )
    assert isinstance(data.inputs, StreamedImages)  # ~600 decoded digits are more than a 1 MB budget
    assert (tmp_path / "run" / "model.pt").exists()
    assert len(result.history) > 0 and np.isfinite(result.history[-1]["loss"])


def _paths(root: Path) -> RunPaths:
    return RunPaths(root)


def _group() -> ProcessGroup:
    return ProcessGroup()


def test_batch_norm_statistics_are_re_estimated_on_source_and_target(photos: dict[str, Path]) -> None:
    """One pass over both domains in one batch: the first batch norm then holds exactly the mean and (unbiased)
    variance of its input over those images; the ImageNet statistics are gone and nothing else changed."""
    sets = [list_labelled_folder(photos["source"]), list_unlabelled_folder(photos["target"])]
    backbone = build_backbone("efficientnet_lite0")
    before = {k: v.clone() for k, v in backbone.module.state_dict().items()}
    conv = backbone.module.get_submodule("conv_stem")
    bn = backbone.module.get_submodule("bn1")
    assert isinstance(bn, torch.nn.BatchNorm2d)
    momentum = bn.momentum
    used = adapt_batch_norm(backbone, sets, device=torch.device("cpu"), workers=0, batch_size=64)
    assert used == 30 and not backbone.module.training
    images = torch.stack(
        [torch.from_numpy(decode_image(p.read_bytes(), (224, 224))).permute(2, 0, 1) for s in sets for p in s.paths]
    )
    with torch.no_grad():
        stem = conv(Normalize(backbone.mean, backbone.std)(images.float() / 255.0))
    assert bn.running_mean is not None and bn.running_var is not None
    assert torch.allclose(bn.running_mean, stem.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, stem.var((0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)
    changed = {k for k, v in backbone.module.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert bn.momentum == momentum is not None  # the pass's cumulative average does not outlive it


def test_a_frozen_run_with_adapted_batch_norm_exports_the_backbone_it_cached_features_with(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    config = FROZEN.override(feature_cache=str(cache), adapt_batch_norm=True, iterations=10)
    train(config, photos["source"], photos["target"], tmp_path / "run")
    folders = sorted(path.name for path in cache.iterdir())
    plain = FeatureCache(cache, "efficientnet_lite0", build_backbone("efficientnet_lite0")).folder.name
    assert len(folders) == 1 and folders != [plain]  # keyed by the adapted weights, not ImageNet's
    restored = restore_network(tmp_path / "run" / "checkpoint.pt")
    adapted = FeatureCache(cache, "efficientnet_lite0", restored.backbone)
    assert adapted.folder.name == folders[0]
    files = list_labelled_folder(photos["queries"])
    keys, _ = extract_features(files, restored.backbone, adapted, 1, device=torch.device("cpu"), workers=0)
    features = torch.cat(list(FeatureTable(adapted, keys, 1, 2**30).plain()))
    loaded = load_encoder(tmp_path / "run" / "model.pt")
    _assert_same_codes(encode_files(loaded.module, files, loaded.input_size), restored, features)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (LossWeights(classification=1.0, neighbours=0.3), "neighbours term needs the frozen mode"),
        (LossWeights(adversarial=1.0, class_weighted_adversary=True), "class-weighted adversary needs the frozen"),
        (LossWeights(classification=1.0, diversity=1.0, estimated_mix=True), "estimated class mix needs the frozen"),
    ],
)
def test_the_whole_target_terms_need_the_frozen_mode(
    photos: dict[str, Path], tmp_path: Path, weights: LossWeights, message: str
) -> None:
    config = TrainConfig(mode="finetune", iterations=2, batch_size=4, loss_weights=weights)
    with pytest.raises(ConfigError, match=message):
        train(config, photos["source"], photos["target"], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_frozen_run_pairs_target_neighbours_and_estimates_the_target_class_mix(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    weights = LossWeights(
        pairwise=1.0,
        classification=1.0,
        adversarial=1.0,
        neighbours=0.3,
        class_weighted_adversary=True,
        diversity=1.0,
        estimated_mix=True,
    )
    config = FROZEN.override(feature_cache=str(tmp_path / "cache"), loss_weights=weights, iterations=40)
    result = train(config, photos["source"], photos["target"], tmp_path / "run")
    assert all("neighbours" in row for row in result.history)  # from the first step
    assert all(math.isfinite(row["neighbours"]) and row["neighbours"] >= 0 for row in result.history)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    class_weights = saved["class_weights"]  # estimated from a quarter of the run on
    assert class_weights.shape == (3,)
    assert bool(torch.all(class_weights > 0)) and bool(torch.all(class_weights <= 10))
    # the three classes are even in this source: the weights are the target's estimated shares times three
    assert float(class_weights.sum()) == pytest.approx(3.0, rel=1e-4)
    mix = saved["target_mix"]  # the diversity term's aim, estimated on the same schedule
    assert mix.shape == (3,) and float(mix.sum()) == pytest.approx(1.0, abs=1e-5) and bool(torch.all(mix > 0))
    assert all(math.isfinite(row["diversity"]) and row["diversity"] >= -math.log(3) - 1e-5 for row in result.history)


def test_a_given_target_class_mix_is_the_diversity_term_s_aim_and_must_name_the_source_classes(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    classes = sorted(path.name for path in photos["source"].iterdir())
    weights = LossWeights(pairwise=1.0, classification=1.0, diversity=1.0)
    wrong = FROZEN.override(loss_weights=weights, iterations=4, target_class_mix={classes[0]: 1.0, "unicorn": 1.0})
    with pytest.raises(ConfigError, match="must name every source class"):
        train(wrong, photos["source"], photos["target"], tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()  # refused before any work
    mix = {name: float(i + 1) for i, name in enumerate(classes)}
    config = FROZEN.override(
        feature_cache=str(tmp_path / "cache"), loss_weights=weights, iterations=6, target_class_mix=mix
    )
    result = train(config, photos["source"], photos["target"], tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    shares = torch.tensor([mix[name] for name in saved["classes"]]) / sum(mix.values())
    assert torch.allclose(saved["target_mix"], shares)  # kept as given, never re-estimated
    # the diversity term is the batch mean's KL from the mix minus log C, so never below -log C
    assert all(row["diversity"] >= -math.log(len(classes)) - 1e-5 for row in result.history)
    assert saved["config"]["target_class_mix"] == mix


def test_the_neighbours_term_takes_fewer_neighbours_from_a_small_target_and_none_from_one_image(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    weights = LossWeights(pairwise=1.0, classification=1.0, neighbours=0.3)
    for count in (3, 1):
        target = tmp_path / f"target{count}"
        target.mkdir()
        for path in sorted(photos["target"].iterdir())[:count]:
            shutil.copyfile(path, target / path.name)
        config = FROZEN.override(feature_cache=str(tmp_path / "cache"), loss_weights=weights, iterations=6)
        result = train(config, photos["source"], target, tmp_path / f"run{count}")
        assert all(("neighbours" in row) == (count > 1) for row in result.history)


def test_a_frozen_run_under_ddp_computes_each_feature_once_and_keeps_the_ranks_in_sync(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    """Two CPU processes under torchrun (gloo), the frozen default on photos: the ranks share the feature work
    (every image computed by exactly one of them), then train on all of it with identical parameters."""
    out = tmp_path / "ddp"
    command = [
        *torchrun_command(2),
        "-m",
        "service.cli",
        "train",
        *("--source", str(photos["source"]), "--target", str(photos["target"]), "--out", str(out)),
        *("--iterations", "12", "--batch-size", "8", "--device", "cpu"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METAH_FEATURE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=PACS.parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    computed = [int(n) for n in re.findall(r"features: (\d+) of \d+ image\(s\) computed", done.stderr)]
    images = len(list(photos["source"].rglob("*.*"))) + len(list(photos["target"].iterdir()))
    assert sum(computed) == images  # once each: not once per rank
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["mode"] == "frozen"
    assert metrics["ddp_parameters_in_sync"] is True
    assert load_encoder(out / "model.pt").bits == 64
