"""The GPU finetune benchmark (``scripts/bench_gpu.py``): what it plans, how each run is configured, when the time
budget stops new runs, and how it reports (the runs themselves need a GPU: they ran on a lent one)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from model.objective import method_weights
from scripts.bench import GRID, RunSpec, Settings, may_start, one_run, run_config, run_mode
from scripts.bench_gpu import GPU_TASKS, VARIANT, report, specs
from scripts.bench_stats import format_mean_std

SETTINGS = Settings(Path("work"), Path("pacs"), Path("cache"), None, "auto", 1, 0)
SHIPPED_PACS = Path(__file__).resolve().parents[1] / "data" / "pacs"


def test_metah_runs_first_then_tah_then_source_only_each_with_the_product_finetune_preset() -> None:
    planned = specs(["source_only", "tah", "metah"], [0, 1, 2], done=set())
    assert len(planned) == 3 * 3 * len(GPU_TASKS)
    assert [spec.method for spec in planned[:6]] == ["metah"] * 6
    assert [spec.method for spec in planned[6:12]] == ["tah"] * 6
    assert [(spec.seed, spec.task) for spec in planned[:2]] == [(0, "photo-cartoon"), (0, "photo-sketch")]
    for spec in planned:
        assert spec.weights == method_weights(spec.method, "finetune") and spec.bits == 64
        assert spec.variant == VARIANT and run_mode(spec) == "finetune"
    assert specs(["metah"], [0], done={planned[0].key}) == [planned[1]]


def test_a_spec_s_own_settings_win_over_the_benchmark_s_task_settings() -> None:
    photo = RunSpec("photo-cartoon", "metah", 64, 0, "v", method_weights("metah", "frozen"), "table")
    assert run_mode(photo) == "frozen" and run_config(photo, SETTINGS).mode == "frozen"
    finetune = specs(["metah"], [0], done=set())[0]
    config = run_config(finetune, SETTINGS)
    assert config.mode == "finetune" and config.backbone == "efficientnet_lite0" and config.device == "auto"
    assert config.steps == 1200 and config.weights == method_weights("metah", "finetune")
    shorter = Settings(Path("w"), Path("p"), Path("c"), 30, "cpu", 1, 0)
    assert run_config(finetune, shorter).steps == 30  # --iterations applies unless the spec sets its own
    own = RunSpec("photo-cartoon", "metah", 64, 0, "v", finetune.weights, "gpu", (("iterations", 7),))
    assert run_config(own, shorter).steps == 7
    digits = RunSpec("mnist-usps", "metah", 64, 0, "v", method_weights("metah"), "table")
    assert run_mode(digits) == "finetune" and run_config(digits, SETTINGS).backbone == "lenet"


def test_tables_print_mean_and_sample_std_and_artefacts_encode_on_the_cpu_unless_a_gpu_is_asked_for_and_present(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert format_mean_std([0.5, 0.7]) == "0.6000 ± 0.1414"  # sample std (n − 1), not the population's 0.1
    assert format_mean_std([0.25]) == "0.2500 ± 0.0000"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert replace(SETTINGS, device="cpu").scoring_device() == "cpu"
    assert SETTINGS.scoring_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert SETTINGS.scoring_device() == "cpu"


def test_no_run_starts_that_the_longest_finished_run_says_would_end_after_the_budget() -> None:
    assert may_start(0.0, 0.0, 100.0)  # nothing finished yet: nothing to go by
    assert may_start(60.0, 40.0, 100.0)
    assert not may_start(61.0, 40.0, 100.0)
    assert may_start(10_000.0, 500.0, None)


def _line(task: str, method: str, seed: int, split: str, value: float, variant: str = VARIANT) -> dict[str, Any]:
    return {
        "key": f"{task}/{method}/64/{seed}/{variant}",
        "task": task,
        "method": method,
        "bits": 64,
        "seed": seed,
        "split": split,
        "variant": variant,
        "map_all": value,
        "run_seconds": 400.0,
        "processes": 9,
        "commit": "abc",
        "command": "python3 -m scripts.bench_gpu",
        "machine": "test, NVIDIA H200",
        "date": "2026-12-04 17:51 UTC",
        "device": "cuda:0",
        "threads": 1,
        "backbone": "efficientnet_lite0",
    }


def _frozen(variant: str, seeds: range, test: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The frozen benchmark's lines: validation rows that make ``variant`` MeTAH's choice, and its test rows."""
    lines = [_line(t, "metah", s, "validation", 0.5, variant) for t in GPU_TASKS for s in (0, 1)]
    return lines + [_line(t, "metah", s, "test", test[t][s], variant) for t in test for s in seeds]


def test_the_report_pairs_each_seed_with_the_same_seed_s_frozen_run_and_reads_the_timing() -> None:
    runs = [
        _line(t, "metah", s, split, 0.80 + 0.01 * s)
        for t in GPU_TASKS
        for s in range(3)
        for split in ("validation", "test")
    ]
    runs += [_line("photo-cartoon", "tah", 0, split, 0.66) for split in ("validation", "test")]
    variant = next(iter(GRID["frozen"]["metah"]))
    frozen = _frozen(variant, range(3), {"photo-cartoon": [0.75, 0.76, 0.77], "photo-sketch": [0.6, 0.6, 0.6]})
    frozen.append(_line("photo-cartoon", "metah", 0, "test", 0.1, "another-variant"))  # not the choice: never read
    runs += [_line("photo-sketch", "tah", 0, split, 0.7) for split in ("validation", "test")]
    tah_variant = next(iter(GRID["frozen"]["tah"]))
    frozen += [_line(t, "tah", s, "validation", 0.5, tah_variant) for t in GPU_TASKS for s in (0, 1)]
    frozen.append(_line("photo-sketch", "tah", 0, "test", 0.55, tah_variant))
    timing = [
        {**_line("photo-sketch", "metah", 0, "test", 0.0), "iterations": 27, "batch_size": 64, "wall_seconds": 36.3}
    ]
    text = report(runs, timing, frozen)
    rows = {tuple(line.split(" | ")[:2]): line for line in text.splitlines() if line.startswith("| photo")}
    cartoon = rows["| photo-cartoon", "metah"]
    assert "| 0.8100 ± 0.0100 | 0.8100 ± 0.0100 | 0.7600 ± 0.0100 | +0.0500 [+0.0500, +0.0500] | 3 |" in cartoon
    assert "| 400 (9 at once) |" in cartoon
    assert "| 0.6000 ± 0.0000 | +0.2100" in rows["| photo-sketch", "metah"]
    tah = rows["| photo-cartoon", "tah"]  # no frozen TAH line: no comparison, rather than a wrong one
    assert "| 0.6600 ± 0.0000 | 0.6600 ± 0.0000 |  |  | 1 |" in tah
    assert "| 0.7000 ± 0.0000 | 0.5500 ± 0.0000 |  | 1 |" in rows["| photo-sketch", "tah"]  # one seed: no interval
    assert ("| photo-cartoon", "source_only") not in rows
    assert "27 steps of 64 source + 64 target images" in text and "**36.3 s** on cuda:0" in text


def test_a_photo_finetune_run_is_scored_with_its_exported_artefact(tmp_path: Path) -> None:
    pacs = tmp_path / "pacs"  # three photos and three cartoons of each class from the shipped subset
    for domain in ("photo", "cartoon"):
        for folder in sorted((SHIPPED_PACS / domain).iterdir()):
            (pacs / domain / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:3]:
                shutil.copy(image, pacs / domain / folder.name / image.name)
    settings = Settings(tmp_path / "work", pacs, tmp_path / "cache", 2, "cpu", 1, 0)
    spec = replace(specs(["metah"], [0], done=set())[0], config=(("mode", "finetune"), ("batch_size", 4)))
    validation, test = one_run(spec, settings)
    assert (validation["split"], test["split"]) == ("validation", "test")
    assert test["mode"] == "finetune" and test["iterations"] == 2 and test["device"] == "cpu"
    assert test["artefact_check"] == {}  # the codes are the artefact's own
    assert all(
        0.0 < record[key]["map_all"] <= 1.0
        for record in (validation, test)
        for key in ("target_vs_source", "target_vs_target")
    )
    assert (settings.run_dir(spec.key) / "model.pt").is_file()
    assert not (tmp_path / "cache").exists()  # finetune runs read images, not cached features
