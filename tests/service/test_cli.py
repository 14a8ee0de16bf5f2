"""``metah train | evaluate | export`` end to end, including every user mistake the issue lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.export import load_encoder
from service.cli import main
from tests.conftest import DigitFolders
from workbench.processes import torchrun_command

TINY = ["--iterations", "6", "--batch-size", "16", "--bits", "16"]


def _metah(
    *args: str, cwd: Path | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or Path(__file__).resolve().parents[2],
        timeout=300,
    )


def _train(source: Path, target: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``metah train --source SOURCE --target TARGET --out OUT ARGS`` in a subprocess."""
    return _metah("train", "--source", str(source), "--target", str(target), "--out", str(out), *args)


@pytest.fixture(scope="module")
def cli_run(digits: DigitFolders, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert (
        main(
            [
                "train",
                "--source",
                str(digits.source),
                "--target",
                str(digits.target),
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    return out


def test_train_writes_the_contract_outputs(cli_run: Path) -> None:
    for name in ("model.pt", "checkpoint.pt", "metrics.json", "history.csv"):
        assert (cli_run / name).exists()
    assert load_encoder(cli_run / "model.pt").bits == 16


def test_evaluate_prints_and_writes_every_metric(
    cli_run: Path, digits: DigitFolders, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    code = main(
        [
            "evaluate",
            "--model",
            str(cli_run / "model.pt"),
            "--query",
            str(digits.query),
            "--database",
            str(digits.source),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "MAP@all=" in printed and "MAP@r2=" in printed and "P@r2=" in printed
    report = json.loads(out.read_text())
    for key in ("map_all", "map_radius2", "precision_radius2", "precision_at_k", "pr_curve"):
        assert key in report
    assert (tmp_path / "eval_pr.png").stat().st_size > 0


def test_export_from_checkpoint_gives_the_same_codes(cli_run: Path, tmp_path: Path) -> None:
    import torch

    assert main(["export", "--checkpoint", str(cli_run / "checkpoint.pt"), "--out", str(tmp_path / "m.pt")]) == 0
    a, b = load_encoder(cli_run / "model.pt"), load_encoder(tmp_path / "m.pt")
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(a.module(x), b.module(x))
    assert a.metadata["model_version"] == b.metadata["model_version"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "12"], "multiple of 8"),
        (["--backbone", "vgg99"], "unknown backbone"),
        (["--iterations", "0"], "iterations"),
    ],
)
def test_usage_errors_exit_2_without_traceback(
    digits: DigitFolders, tmp_path: Path, args: list[str], message: str
) -> None:
    done = _train(digits.source, digits.target, tmp_path / "r", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_missing_folders_and_corrupt_checkpoint_are_clear_errors(digits: DigitFolders, tmp_path: Path) -> None:
    done = _train(tmp_path / "nope", digits.target, tmp_path / "r")
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "bad.pt").write_bytes(os.urandom(256))
    done = _metah("export", "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "m.pt"))
    assert done.returncode == 2 and "corrupt" in done.stderr and "Traceback" not in done.stderr
    done = _metah(
        "evaluate",
        "--model",
        str(tmp_path / "bad.pt"),
        "--query",
        str(digits.query),
        "--database",
        str(digits.source),
    )
    assert done.returncode == 2 and "not a TorchScript" in done.stderr and "Traceback" not in done.stderr


def test_unknown_method_is_an_argparse_usage_error(digits: DigitFolders, tmp_path: Path) -> None:
    done = _train(digits.source, digits.target, tmp_path, "--method", "dann")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_two_process_ddp_on_gloo(digits: DigitFolders, tmp_path: Path) -> None:
    """The same code under torchrun: 2 CPU processes, gloo, parameters identical on both ranks."""
    out = tmp_path / "ddp"
    done = subprocess.run(
        [
            *torchrun_command(2),
            "-m",
            "service.cli",
            "train",
            "--source",
            str(digits.source),
            "--target",
            str(digits.target),
            "--out",
            str(out),
            *TINY,
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["ddp_parameters_in_sync"] is True
    assert load_encoder(out / "model.pt").bits == 16


def test_train_help_states_each_mode_s_default_length() -> None:
    from model.config import MODE_SCHEDULES
    from service.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    (iterations,) = [action for action in train._actions if "--iterations" in action.option_strings]
    frozen, finetune = MODE_SCHEDULES["frozen"].iterations, MODE_SCHEDULES["finetune"].iterations
    assert iterations.help == f"steps (default: {frozen} frozen, {finetune} finetune)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid json"),
        ('{"bitz": 32}', "unknown configuration key(s): bitz"),
        ('{"loss_weights": {"entropy": -1}}', "loss_weights.entropy must be a finite number >= 0"),
        ('{"loss_weights": {"adversarial": "lots"}}', "loss_weights.adversarial must be a finite number"),
        ('{"loss_weights": {"label_smoothing": 1.5}}', "label_smoothing must be below 1"),
        ('{"loss_weights": {"warp": 9}}', "invalid loss_weights"),
        ("[1, 2]", "must hold an object"),
    ],
)
def test_a_broken_config_file_is_a_clear_error_before_any_output(
    digits: DigitFolders, tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "config.json").write_text(text)
    done = _train(digits.source, digits.target, tmp_path / "r", "--config", str(tmp_path / "config.json"))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()
