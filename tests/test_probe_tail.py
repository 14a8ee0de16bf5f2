"""The partial fine-tuning probe (``scripts/probe_tail.py``): its cached taps, its tail, its loop and its report.

Real PACS photos and cartoons from the repo's ``data/pacs`` subset and the real EfficientNet-Lite0.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.config import TrainConfig
from model.data import list_labelled_folder
from model.evaluate import encode_files, shared_label_ids
from model.export import load_encoder
from model.factory import restore_network
from model.preprocess import decode_image
from model.train import train
from scripts.bench import Split
from scripts.probe_tail import ARMS, Tail, TaskTaps, codes, continue_run, extract, lite0, report

PACS = Path(__file__).resolve().parents[1] / "data" / "pacs"
CLASSES = ("dog", "giraffe", "house")


def _sample(domain: str, per_class: int, out: Path) -> Path:
    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
        for path in sorted((PACS / domain / name).iterdir())[:per_class]:
            shutil.copyfile(path, out / name / path.name)
    return out


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A short frozen MeTAH run (photos → cartoons) and the probe's taps of both folders."""
    root = tmp_path_factory.mktemp("probe-tail")
    source, target = _sample("photo", 4, root / "photo"), _sample("cartoon", 3, root / "cartoon")
    unlabelled = root / "cartoon_train"
    unlabelled.mkdir()
    for path in target.rglob("*.jpg"):
        shutil.copyfile(path, unlabelled / f"{path.parent.name}_{path.name}")
    config = TrainConfig(
        mode="frozen",
        backbone="efficientnet_lite0",
        iterations=12,
        batch_size=4,
        feature_views=2,
        feature_cache=str(root / "cache"),
        eval_queries=4,
        loader_workers=0,
    )
    train(config, source, unlabelled, root / "run", show_progress=False)
    for folder in (source, target):
        extract(folder, root / f"{folder.name}.npz")
    arrays = {name: np.load(root / f"{name}.npz") for name in ("photo", "cartoon")}
    target_labels, source_labels = shared_label_ids(list_labelled_folder(target), list_labelled_folder(source))
    taps = TaskTaps(
        torch.from_numpy(arrays["photo"]["taps"]),
        torch.from_numpy(arrays["cartoon"]["taps"]),
        source_labels,
        target_labels,
        list(CLASSES),
    )
    every = np.arange(len(target_labels))
    split = Split(validation=every, test=every, train=every, train_dir=unlabelled)
    return {"root": root, "source": source, "target": target, "taps": taps, "split": split}


def test_taps_hold_a_plain_and_an_augmented_view_and_the_tail_turns_them_into_the_backbone_s_features(
    frozen_run: dict[str, Any],
) -> None:
    taps = frozen_run["taps"].source
    assert taps.shape == (12, 2, 320, 7, 7) and taps.dtype == torch.float16
    assert float((taps[:, 0].float() - taps[:, 1].float()).abs().mean()) > 0.05  # view 1 is another picture
    restored = restore_network(frozen_run["root"] / "run" / "checkpoint.pt")
    with torch.no_grad():
        features = restored.net.eval().features(_images(frozen_run["source"]))
        tail = Tail(lite0()).eval()(taps[:, 0])
    torch.testing.assert_close(tail, features, atol=0.02, rtol=0.01)  # the taps are float16


def _images(folder: Path) -> torch.Tensor:
    paths = list_labelled_folder(folder).paths
    pixels = [torch.from_numpy(decode_image(path.read_bytes(), (224, 224))).permute(2, 0, 1) for path in paths]
    return torch.stack(pixels).float().div(255.0)


def test_the_probe_s_codes_are_the_exported_encoder_s(frozen_run: dict[str, Any]) -> None:
    root = frozen_run["root"]
    restored = restore_network(root / "run" / "checkpoint.pt")
    probe = codes(restored.net.heads, Tail(lite0()), frozen_run["taps"].target)
    loaded = load_encoder(root / "run" / "model.pt")
    artefact = encode_files(loaded.module, list_labelled_folder(frozen_run["target"]), loaded.input_size)
    assert probe.shape == artefact.shape == (9, 64)
    assert float(np.mean(probe == artefact)) > 0.98  # float16 taps may flip a bit that sits at zero


def test_the_tail_keeps_its_batch_norm_statistics_while_its_weights_learn() -> None:
    tail = Tail(lite0()).train()
    statistics = tail.norm.running_mean.clone()
    tail(torch.randn(4, 320, 7, 7) * 3).sum().backward()
    assert not tail.norm.training and torch.equal(tail.norm.running_mean, statistics)
    assert tail.conv.weight.grad is not None and tail.norm.weight.grad is not None


def test_nothing_moves_at_a_zero_learning_rate_and_every_arm_starts_from_the_run_s_score(
    frozen_run: dict[str, Any],
) -> None:
    checkpoint = frozen_run["root"] / "run" / "checkpoint.pt"
    taps, split = frozen_run["taps"], frozen_run["split"]
    still = {arm: continue_run(arm, checkpoint, taps, split, steps=3, lr=0.0, seed=0) for arm in ARMS}
    assert len({row["before"] for row in still.values()}) == 1
    assert all(row["after"] == row["before"] for row in still.values())
    moved = continue_run("tail", checkpoint, taps, split, steps=3, lr=0.05, seed=0)
    assert moved["before"] == still["tail"]["before"] and moved["seconds_per_step"] > 0


def test_the_report_has_a_row_per_task_and_arm_with_the_mean_change_and_its_spread() -> None:
    runs = [
        {
            "task": "photo-cartoon",
            "seed": seed,
            "arm": arm,
            "before": 0.7,
            "after": 0.7 + change,
            "seconds_per_step": 0.1,
        }
        for arm in ARMS
        for seed, change in ((0, 0.01), (1, 0.03))
    ]
    machine = {"commit": "abc", "date": "2026-12-04", "cpu": "test"}
    text = report(
        {
            "command": "python -m scripts.probe_tail",
            "machine": machine,
            "runs": runs,
            "tasks": ["photo-cartoon"],
            "steps": 150,
            "lr": 3e-4,
        }
    )
    assert "| photo-cartoon | tail | 2 | 0.7000 | 0.7200 | +0.0200 ± 0.0141 | +0.010, +0.030 | 0.100 |" in text
    assert text.count("| photo-cartoon |") == len(ARMS)
