"""The digit run-length check (``scripts/bench_steps.py``) and the benchmark plan it prices (``scripts/bench.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.config import TrainConfig
from model.objective import method_weights
from scripts.bench import TAH_REFERENCE, VALIDATION_MIX, parse_args, plan, product_choice, whole_plan
from scripts.bench import report as bench_report
from scripts.bench_steps import LENGTHS, METHODS, plan_runs, reference_rows, report, specs

TASKS = ["mnist-usps", "usps-mnist"]


def test_each_length_runs_every_method_default_on_every_task_and_seed() -> None:
    planned = specs(TASKS, [0, 1], done=set())
    assert len(planned) == len(LENGTHS) * len(METHODS) * len(TASKS) * 2
    assert len({spec.key for spec in planned}) == len(planned)
    for spec in planned:
        assert spec.weights == method_weights(spec.method, "finetune")
        length = TrainConfig(**dict(spec.config)).iterations  # one_run applies it to the run's TrainConfig
        assert spec.variant.endswith(f"+iterations={length}") and length in LENGTHS
    assert specs(TASKS, [0, 1], done={spec.key for spec in planned}) == []


def test_the_whole_digit_plan_reuses_the_chosen_tuning_runs_as_the_tables_first_seeds() -> None:
    args = parse_args(["--stage", "all", "--family", "digits"])
    choice = product_choice("finetune")
    tune = plan("tune", args, set(), choice)
    table = plan("table", args, set(), choice)
    everything = whole_plan(args, choice)
    assert len(tune) == 2 * 11 * 2  # tuned tasks × grid points × tuning seeds
    reused = {spec.key for spec in tune} & {spec.key for spec in table}
    # the three chosen points and TAH's reference weighting (one of them when TAH's grid chose it) at 64 bits,
    # seeds 0 and 1, on both tuned tasks
    points = {(method, variant) for (_, method), variant in choice.items()} | {("tah", TAH_REFERENCE)}
    assert len(reused) == 2 * len(points) * 2
    assert len(everything) == len(tune) + len(table) - len(reused) + 3 * 4 * 3  # + ablations: tasks × parts × seeds
    assert sum(plan_runs().values()) == len(everything)


def _line(method: str, length: int, value: float, seconds: float, split: str = "validation") -> dict[str, Any]:
    variant = f"{product_choice('finetune')['finetune', method]}+iterations={length}"
    return {
        "variant": variant,
        "method": method,
        "split": split,
        "map_all": value,
        "run_seconds": seconds,
        "processes": 2,
        "commit": "abc",
        "command": "python -m scripts.bench_steps",
        "machine": "test",
        "date": "2026-12-02 00:00 UTC",
        "device": "cpu",
        "threads": 1,
        "backbone": "lenet",
    }


def _rows(text: str) -> dict[str, str]:
    return {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}


def test_a_length_fits_when_the_projected_plan_is_within_the_budget() -> None:
    counts = plan_runs()
    lines = []
    for length, seconds in ((400, 60.0), (500, 75.0), (600, 90.0)):
        lines += [_line(method, length, 0.9, seconds) for method in METHODS]
    lines += [_line("metah", 600, 0.01, 1.0, split="test")]  # neither a score nor a time of the check
    minutes = sum(counts.values()) * 75.0 / 2 / 60  # every planned run at 75 s, two at a time
    text = report(lines, TASKS, budget=minutes)
    rows = _rows(text)
    assert rows["500"].endswith(f"| 75 | 75 | 75 | {minutes:.0f} min | yes |")
    assert rows["600"].endswith("| no |")
    assert rows["400"].endswith("| yes |")
    assert "| yes |" not in report(lines, TASKS, budget=1.0)
    assert len(specs(TASKS, [0], done=set(), lengths=[1200])) == len(METHODS) * len(TASKS)


def test_reference_rows_are_the_product_defaults_at_the_default_length_only(tmp_path: Path) -> None:
    choice = product_choice("finetune")
    raw = []
    for method in METHODS:
        base = {"split": "validation", "task": "mnist-usps", "seed": 0, "bits": 64, "method": method}
        raw.append({**base, "iterations": 1200, "variant": choice["finetune", method], "map_all": 0.8})
        raw.append({**base, "iterations": 600, "variant": choice["finetune", method], "map_all": 0.1})
        raw.append({**base, "iterations": 1200, "variant": "p9-q9", "map_all": 0.1})
        raw.append({**base, "iterations": 1200, "variant": choice["finetune", method], "split": "test"})
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in raw))
    rows = reference_rows(path, TASKS, [0, 1])
    assert sorted(r["method"] for r in rows) == sorted(METHODS)
    assert all(r["map_all"] == 0.8 and r["variant"].endswith("+iterations=1200") for r in rows)
    lines = [_line(method, 400, 0.7, 60.0) for method in METHODS]
    text = report([*lines, *({**r, "commit": "old"} for r in rows)], TASKS, budget=1000.0)
    assert _rows(text)["400"].startswith("| 400 | 0.7000 | -0.1000 |")
    assert "1200-step row is borrowed (3 validation lines" in text and "`old`" in text


def test_the_benchmark_report_lists_each_recorded_stage_time_and_skips_other_timings(tmp_path: Path) -> None:
    common = {"commit": "abc", "date": "2026-12-02 23:00 UTC", "load_average": [1.5, 1.0, 0.5], "threads": 1}
    lines = [
        {"timing": "frozen-cold", "wall_seconds": 272.4, **common},  # a photo training timing: not a stage
        {
            "timing": "stage",
            "stage": "tune",
            "family": "digits",
            "runs": 44,
            "iterations": None,
            "processes": 2,
            "wall_seconds": 1800.0,
            **common,
        },
        {
            "timing": "stage",
            "stage": "all",
            "family": "digits",
            "runs": None,
            "iterations": 400,
            "processes": 2,
            "wall_seconds": 90.0,
            **common,
        },
    ]
    (tmp_path / "timing.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    text = bench_report(tmp_path, TASKS, [0, 1])
    rows = [line for line in text.splitlines() if line.startswith("| 2026")]
    assert rows == [
        "| 2026-12-02 23:00 UTC | `abc` | digits | tune | 44 | default | 2 × 1 | 30.0 min | 1.50, 1.00, 0.50 |",
        "| 2026-12-02 23:00 UTC | `abc` | digits | all |  | 400 | 2 × 1 | 1.5 min | 1.50, 1.00, 0.50 |",
    ]


def test_more_64_bit_seeds_add_table_rows_at_64_bits_only() -> None:
    argv = ["--stage", "table", "--family", "photos", "--tasks", "photo-cartoon", "--bits", "32", "64"]
    choice = product_choice("frozen")
    five = plan("table", parse_args(argv), set(), choice)
    twenty = plan("table", parse_args([*argv, "--seeds", *map(str, range(20)), "--seeds-64", "20"]), set(), choice)
    assert {spec.key for spec in five} < {spec.key for spec in twenty}
    added = [spec for spec in twenty if spec.key not in {s.key for s in five}]
    assert {spec.bits for spec in added} == {64} and {spec.seed for spec in added} == set(range(5, 20))
    # three methods' chosen points, TAH's reference weighting and MeTAH given the validation queries' class mix
    assert len(added) == 15 * 5
    mixed = [spec for spec in twenty if spec.variant.endswith(f"+{VALIDATION_MIX}")]
    assert len(mixed) == 20 and {spec.bits for spec in mixed} == {64}
    assert all(dict(spec.config) == {"target_class_mix": VALIDATION_MIX} for spec in mixed)
    assert all(spec.weights == method_weights("metah", "frozen") for spec in mixed)
    digits = plan("table", parse_args(["--stage", "table", "--family", "digits"]), set(), product_choice("finetune"))
    assert not any(VALIDATION_MIX in spec.variant for spec in digits)  # photo tasks only
