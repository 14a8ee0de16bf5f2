"""The benchmark's target splits (``scripts.bench.split_target``): protocol 1 as the committed tables were made,
protocol 2 with one validation tenth for every seed, so that no test query was ever a validation query."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import FileSet
from scripts import bench
from scripts.bench import Settings, TaskFiles, split_target


def _target(tmp_path: Path, n: int = 203) -> FileSet:
    paths = [tmp_path / "images" / f"{i:04d}.png" for i in range(n)]
    return FileSet(paths, torch.full((n,), -1), [], [(8, 8)] * n)


@pytest.mark.parametrize("protocol", [1, 2])
def test_each_seed_splits_the_target_into_disjoint_tenths_and_the_rest(tmp_path: Path, protocol: int) -> None:
    target = _target(tmp_path)
    split = split_target("task", target, 3, tmp_path / "work", protocol)
    parts = [split.validation, split.test, split.train]
    assert [len(p) for p in parts] == [20, 20, 163]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(203))
    assert sorted(link.name for link in split.train_dir.glob("*.png")) == [f"images_{i:04d}.png" for i in split.train]
    assert split_target("task", target, 3, tmp_path / "work", protocol).test.tolist() == split.test.tolist()


def test_protocol_1_lets_a_seed_s_test_queries_be_another_seed_s_validation_queries(tmp_path: Path) -> None:
    target = _target(tmp_path)
    splits = [split_target("task", target, seed, tmp_path / "work") for seed in range(5)]
    assert any(set(a.validation) & set(b.test) for a in splits for b in splits)  # what protocol 2 removes
    assert splits[0].validation.tolist() != splits[1].validation.tolist()


def test_protocol_2_shares_one_validation_tenth_that_no_seed_tests_or_trains_on(tmp_path: Path) -> None:
    target = _target(tmp_path)
    splits = [split_target("task", target, seed, tmp_path / "work", 2) for seed in range(5)]
    pool = set(splits[0].validation)
    for split in splits:
        assert set(split.validation) == pool
        assert not pool & set(split.test) and not pool & set(split.train)
    assert len({tuple(split.test) for split in splits}) == 5  # the seeds still differ
    assert splits[0].train_dir != split_target("task", target, 0, tmp_path / "work").train_dir  # own folders
    with pytest.raises(ValueError, match="unknown split protocol 3"):
        split_target("task", target, 0, tmp_path / "work", 3)


def test_the_given_mix_row_counts_the_seed_s_validation_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 203
    labels = torch.tensor([i % 3 if i % 10 else 3 for i in range(n)])  # four classes, the last one rare
    target = FileSet([tmp_path / "images" / f"{i:04d}.png" for i in range(n)], labels, ["a", "b", "c", "d"], [])
    files = TaskFiles(tmp_path / "photo", target, target)
    monkeypatch.setattr(bench, "_files", lambda *_: files)
    settings = Settings(tmp_path / "work", tmp_path, tmp_path / "cache", None, "cpu", 1, 0, split_protocol=2)
    validation = settings.split("photo-sketch", 4).validation
    mix = bench.validation_mix("photo-sketch", 4, settings)
    counts = labels[torch.from_numpy(validation)].bincount(minlength=4)
    assert mix == {name: int(count) / len(validation) for name, count in zip("abcd", counts, strict=True)}
    assert sum(mix.values()) == pytest.approx(1.0)
    whole = bench.class_shares(target)  # the whole domain (bench_knobs' oracle): 21 of the 203 are the rare class
    assert whole["d"] == pytest.approx(21 / 203) and sum(whole.values()) == pytest.approx(1.0)
    weights = bench.GRID["frozen"]["metah"][bench.product_choice("frozen")["frozen", "metah"]]
    marker = (("target_class_mix", bench.VALIDATION_MIX),)
    spec = bench.RunSpec("photo-sketch", "metah", 64, 4, "x", weights, "table", marker)
    assert bench.run_config(spec, settings).target_class_mix == mix  # the marker, resolved per seed
    plain = bench.RunSpec("photo-sketch", "metah", 64, 4, "y", weights, "table")
    assert bench.run_config(plain, settings).target_class_mix is None


def _run(method: str, variant: str, seed: int, split: str, value: float, stage: str = "table") -> dict[str, object]:
    scores = {"map_all": value, "map_radius2": value, "precision_radius2": value}
    return {
        "key": f"photo-sketch/{method}/64/{seed}/{variant}",
        "stage": stage,
        "task": "photo-sketch",
        "method": method,
        "bits": 64,
        "seed": seed,
        "split": split,
        "variant": variant,
        "map_all": value,
        "target_vs_source": scores,
        "target_vs_target": scores,
        "train_seconds": 40.0,
        "split_protocol": 2,
        "commit": "abc",
        "command": "python -m scripts.bench",
        "machine": "test",
        "date": "2026-12-05 09:00 UTC",
        "device": "cpu",
        "threads": 1,
        "backbone": "efficientnet_lite0",
    }


def test_the_report_shows_the_given_mix_row_apart_and_pairs_it_with_metah(tmp_path: Path) -> None:
    chosen = bench.product_choice("frozen")["frozen", "metah"]
    mixed = f"{chosen}+{bench.VALIDATION_MIX}"
    tuned = ("photo-cartoon", "photo-sketch")  # validation lines on both tuned tasks make it MeTAH's choice
    lines = [{**_run("metah", chosen, seed, "validation", 0.6), "task": task} for seed in (0, 1) for task in tuned]
    lines += [_run("metah", chosen, seed, "test", 0.5 + 0.01 * seed) for seed in range(3)]
    lines += [_run("metah", mixed, seed, "test", 0.6 + 0.02 * seed) for seed in range(3)]
    lines += [_run("metah", "some-other-point+validation-mix", 0, "test", 0.99)]  # not the chosen point's: unread
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = bench.report(tmp_path, ["photo-sketch"], [0, 1])
    assert f"| 64 | {bench.GIVEN_MIX_LABEL} | 0.6200 ± 0.0200 |" in text
    assert "| 64 | metah | 0.5100 ± 0.0100 |" in text
    assert f"| 64 | {bench.GIVEN_MIX_LABEL} − metah | +0.1100 |" in text
    assert "0.99" not in text


def test_the_report_keeps_each_earlier_default_beside_today_s_choice_and_pairs_them(tmp_path: Path) -> None:
    chosen = bench.product_choice("frozen")["frozen", "metah"]
    earlier, label = next(
        (point, name) for point, name in bench.EARLIER_DEFAULTS["frozen"]["metah"].items() if point != chosen
    )
    tuned = ("photo-cartoon", "photo-sketch")
    lines = [{**_run("metah", chosen, seed, "validation", 0.6), "task": task} for seed in (0, 1) for task in tuned]
    lines += [_run("metah", chosen, seed, "test", 0.5 + 0.01 * seed) for seed in range(3)]
    lines += [_run("metah", earlier, seed, "test", 0.45 + 0.02 * seed) for seed in range(3)]
    lines += [_run("metah", "a-point-never-the-default", 0, "test", 0.99)]  # neither chosen nor earlier: unread
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = bench.report(tmp_path, ["photo-sketch"], [0, 1])
    assert "| 64 | metah | 0.5100 ± 0.0100 |" in text
    assert f"| 64 | {label} | 0.4700 ± 0.0200 |" in text
    assert f"| 64 | metah − {label} | +0.0400 |" in text
    assert "0.99" not in text
