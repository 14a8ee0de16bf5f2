"""The frozen default's sensitivity check (``scripts/bench_knobs.py``): what it plans and how it reports."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from model.config import TrainConfig
from model.errors import ConfigError
from model.objective import method_weights
from scripts.bench import GRID
from scripts.bench_knobs import DEFAULT, FROZEN_DEFAULT, KNOBS, SWEEP_WEIGHTS, TRUE_TARGET_MIX, report, specs

TASKS = ["photo-cartoon", "photo-sketch"]
NEIGHBOURS_POINT = "p10-q0.8-a3-c1-e0.3-d1-n0.3-cdan"  # the frozen MeTAH preset of 2026-12-05 morning


def test_every_change_is_one_run_per_task_and_seed_next_to_the_default() -> None:
    planned = specs(TASKS, [0, 1], done=set())
    assert len(planned) == len(KNOBS) * len(TASKS) * 2
    assert len({spec.key for spec in planned}) == len(planned)
    default = GRID["frozen"]["metah"][SWEEP_WEIGHTS]  # the default when the sweep was built, not today's preset
    assert default.adversarial == 1.0 and method_weights("metah", "frozen").adversarial == 3.0
    by_variant = {spec.variant: spec for spec in planned}
    base = next(spec for spec in planned if "+" not in spec.variant)
    assert base.weights == default and base.config == (("iterations", 1200), ("lr", 1e-3))  # SWEEP_SCHEDULE
    longer = by_variant[f"{base.variant}+lr=0.003,iterations=3600"]
    assert dict(longer.config) == {"iterations": 3600, "lr": 3e-3}  # a change's own schedule wins
    hidden = by_variant[f"{base.variant}+hash_hidden=512"]
    assert hidden.weights == default
    assert TrainConfig(**dict(hidden.config)).hash_hidden == 512  # one_run applies it to the run's TrainConfig
    entropy = by_variant[f"{base.variant}+entropy=0.1"]
    assert entropy.config == base.config and entropy.weights.entropy == 0.1
    assert entropy.weights.diversity == default.diversity


def test_runs_already_in_the_raw_file_are_not_planned_again() -> None:
    first = specs(TASKS, [0], done=set())
    assert specs(TASKS, [0], done={spec.key for spec in first}) == []
    assert len(specs(TASKS, [0], done={first[0].key})) == len(first) - 1


def test_only_the_named_changes_are_planned() -> None:
    names = [f"{FROZEN_DEFAULT},neighbours=0.3", f"{FROZEN_DEFAULT},neighbours=0.3,diversity=1,estimated_mix"]
    planned = specs(TASKS, [0, 1, 2], done=set(), names=names)
    assert len(planned) == 2 * len(TASKS) * 3
    assert {spec.variant.split("+", 1)[1] for spec in planned} == set(names)
    mixed = next(spec for spec in planned if spec.variant.endswith("estimated_mix"))
    assert mixed.weights == replace(GRID["frozen"]["metah"][NEIGHBOURS_POINT], estimated_mix=True)


def test_the_true_target_mix_is_each_task_s_own_and_must_be_supplied() -> None:
    name = f"{FROZEN_DEFAULT},neighbours=0.3,diversity=1,true_target_mix"
    mixes = {"photo-cartoon": {"dog": 0.6, "cat": 0.4}, "photo-sketch": {"dog": 0.1, "cat": 0.9}}
    planned = specs(TASKS, [0], done=set(), names=[name], true_mix=mixes.__getitem__)
    assert {spec.task: dict(spec.config)["target_class_mix"] for spec in planned} == mixes
    assert all(spec.weights == GRID["frozen"]["metah"][NEIGHBOURS_POINT] for spec in planned)
    unresolved = specs(TASKS, [0], done=set(), names=[name])  # no mixes given: the marker, which no run accepts
    assert all(dict(spec.config)["target_class_mix"] == TRUE_TARGET_MIX for spec in unresolved)
    with pytest.raises(ConfigError, match="target_class_mix must map class names"):
        TrainConfig(**dict(unresolved[0].config)).validated()


def _line(variant: str, task: str, seed: int, value: float, split: str = "validation") -> dict[str, Any]:
    return {
        "variant": variant,
        "task": task,
        "seed": seed,
        "split": split,
        "map_all": value,
        "commit": "abc",
        "command": "python -m scripts.bench_knobs",
        "machine": "test",
        "date": "2026-12-02 00:00 UTC",
        "device": "cpu",
        "threads": 1,
        "backbone": "efficientnet_lite0",
    }


def test_the_report_reads_validation_only_and_gives_each_change_against_the_default() -> None:
    base = next(spec.variant for spec in specs(TASKS, [0], done=set()) if "+" not in spec.variant)
    lines = [_line(base, task, seed, 0.6) for task in TASKS for seed in (0, 1)]
    lines += [_line(f"{base}+lr=0.003", task, seed, 0.5 + 0.1 * seed) for task in TASKS for seed in (0, 1)]
    lines += [_line(f"{base}+lr=0.003", task, 0, 0.99, split="test") for task in TASKS]  # never read
    lines += [_line(f"{base}+iterations=600", "photo-cartoon", 0, 0.9)]  # one task only: no row
    text = report(lines, TASKS)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows[DEFAULT].endswith("| 0.6000 ± 0.0000 | 0.6000 ± 0.0000 | 0.6000 |  | 4 |")
    # each task's mean ± sample std over its seeds (0.5 and 0.6: std 0.0707)
    assert rows["lr=0.003"].endswith("| 0.5500 ± 0.0707 | 0.5500 ± 0.0707 | 0.5500 | -0.0500 | 4 |")
    assert "iterations=600" not in rows


def test_changes_around_today_s_frozen_default_are_measured_against_it() -> None:
    planned = {spec.variant.split("+", 1)[-1]: spec for spec in specs(TASKS, [0], done=set())}
    today = planned[FROZEN_DEFAULT]
    assert today.weights == GRID["frozen"]["metah"]["p10-q0.8-a3-c1-e0.3-d0.3-cdan"]  # the preset of 2026-12-04
    assert dict(today.config) == {"iterations": 3600, "lr": 3e-3}  # and its schedule, still the product's
    neighbours = planned[f"{FROZEN_DEFAULT},neighbours=0.3,diversity=1"]
    assert neighbours.weights == GRID["frozen"]["metah"][NEIGHBOURS_POINT]  # the preset of 2026-12-05 morning
    weaker = planned[f"{FROZEN_DEFAULT},neighbours=0.3,diversity=1,entropy=0.1"]
    assert weaker.weights == method_weights("metah", "frozen")  # the preset since 2026-12-05 noon
    assert dict(weaker.config) == {"iterations": 3600, "lr": 3e-3}
    assert dict(neighbours.config) == {"iterations": 3600, "lr": 3e-3}
    assert planned[f"{FROZEN_DEFAULT},entropy_weighted_adversary"].weights.entropy_weighted_adversary
    assert planned[f"{FROZEN_DEFAULT},finetune-weights"].weights == method_weights("metah", "finetune")
    assert dict(planned[f"{FROZEN_DEFAULT},finetune-weights"].config) == {"iterations": 3600, "lr": 3e-3}
    base = next(spec.variant for spec in planned.values() if "+" not in spec.variant)
    lines = [_line(base, task, seed, 0.6) for task in TASKS for seed in (0, 1)]
    lines += [_line(f"{base}+{FROZEN_DEFAULT}", task, seed, 0.7) for task in TASKS for seed in (0, 1)]
    lines += [
        _line(f"{base}+{FROZEN_DEFAULT},label_smoothing=0.1", task, seed, 0.65) for task in TASKS for seed in (0, 1)
    ]
    rows = {
        line.split(" | ")[0].lstrip("| "): line for line in report(lines, TASKS).splitlines() if line.startswith("| ")
    }
    assert rows[FROZEN_DEFAULT].endswith("| 0.7000 | +0.1000 | 4 |")  # against the sweep's base
    assert rows[f"{FROZEN_DEFAULT},label_smoothing=0.1"].endswith("| 0.6500 | -0.0500 | 4 |")  # against today's
