"""The benchmark's target splits (``scripts.bench.split_target``): protocol 1 as the committed tables were made,
protocol 2 with one validation tenth for every seed, so that no test query was ever a validation query."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import FileSet
from scripts.bench import split_target


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
