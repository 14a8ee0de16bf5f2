"""The per-class probe (``scripts/probe_classes.py``): its per-class MAP, its dog-breed mass and its report."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch

from scripts.bench import METHODS
from scripts.probe_classes import dog_mass, imagenet_lite0, oracle_recall, per_class_map, report
from scripts.probe_tail import extract

PACS = Path(__file__).resolve().parents[1] / "data" / "pacs"


def test_map_is_scored_class_by_class_and_a_class_without_queries_has_none() -> None:
    db = np.array([[1, 1], [1, 1], [-1, -1], [-1, -1]])
    db_labels = np.array([0, 0, 1, 1])
    queries = np.array([[1, 1], [1, 1], [1, 1]])  # all sit on class 0's codes
    maps = per_class_map(queries, np.array([0, 0, 1]), db, np.array([*db_labels[:3], 2]))
    assert maps[0] == 1.0 and maps[1] < 0.5 and math.isnan(maps[2])


def test_the_oracle_reads_a_separable_class_and_not_one_with_shuffled_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(3), 40)
    features = torch.randn(120, 64, generator=generator)  # enough dimensions to fit any labels it trains on
    features[:, 0] += torch.from_numpy(labels == 0).float() * 6  # class 0 stands apart on one dimension
    recall = oracle_recall(features, labels, classes=4)
    assert recall[0] == 1.0 and math.isnan(recall[3])
    assert max(recall[1], recall[2]) < 0.8  # classes 1 and 2 share one cloud
    shuffled = np.random.default_rng(0).permutation(labels)
    assert np.nanmean(oracle_recall(features, shuffled, classes=4)) < 0.6  # it reads held-out labels only


def test_imagenet_s_classifier_puts_photo_dogs_on_dog_breeds_and_houses_not(tmp_path: Path) -> None:
    for name in ("dog", "house"):
        (tmp_path / "photo" / name).mkdir(parents=True)
        for path in sorted((PACS / "photo" / name).iterdir())[:3]:
            shutil.copyfile(path, tmp_path / "photo" / name / path.name)
    extract(tmp_path / "photo", tmp_path / "photo.npz")
    mass = dog_mass(imagenet_lite0(), torch.from_numpy(np.load(tmp_path / "photo.npz")["taps"]))
    assert mass.shape == (6,) and bool(np.all((mass >= 0) & (mass <= 1)))
    assert mass[:3].mean() > 0.5 and mass[3:].mean() < 0.1


def test_the_report_has_a_row_per_class_with_each_method_s_map() -> None:
    row = {
        "class": "dog",
        "queries": 39,
        "query_share": 0.1667,
        "map": {method: 0.25 for method in METHODS},
        "dog_mass_photo": 0.84,
        "dog_mass_target": 0.05,
        "oracle_recall": 0.72,
    }
    machine = {"commit": "abc", "date": "2026-12-05", "cpu": "test"}
    results = {
        "command": "python -m scripts.probe_classes",
        "machine": machine,
        "seeds": [0, 1],
        "tasks": [{"task": "photo-cartoon", "classes": [row]}],
    }
    text = report(results)
    assert "## photo-cartoon" in text
    assert "| dog | 39 (17%) | 0.250 | 0.250 | 0.250 | 0.84 | 0.05 | 0.72 |" in text
