"""The test-time flip probe (``scripts/probe_flip.py``): its features and its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from scripts.probe_flip import WAYS, extract, report


def test_a_mirror_symmetric_image_has_the_same_features_both_ways_and_a_lopsided_one_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    lopsided = np.concatenate([half, np.zeros_like(half)], axis=1)
    for label, pixels in (("a", symmetric), ("b", lopsided)):
        (tmp_path / "photo" / label).mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "photo" / label / "1.png")
    name, count = extract(tmp_path / "photo", tmp_path / "photo.npz")
    data = np.load(tmp_path / "photo.npz")
    assert (name, count) == ("photo", 2) and data["plain"].shape == data["mirror"].shape == (2, 1280)
    assert list(data["labels"]) == [0, 1]
    np.testing.assert_allclose(data["plain"][0], data["mirror"][0], atol=1e-4)
    assert np.abs(data["plain"][1] - data["mirror"][1]).max() > 1e-2


def test_the_report_has_a_row_per_run_and_the_mean_of_each_way() -> None:
    runs = [{"task": "photo-cartoon", "seed": s, **{way: 0.5 + 0.1 * s for way in WAYS}} for s in (0, 1)]
    machine = {"commit": "abc", "date": "2026-12-04", "cpu": "test"}
    text = report({"command": "python -m scripts.probe_flip", "machine": machine, "runs": runs})
    assert "| photo-cartoon | 1 | 0.6000 | 0.6000 | 0.6000 | 0.6000 |" in text
    assert "| mean | | 0.5500 | 0.5500 | 0.5500 | 0.5500 |" in text
