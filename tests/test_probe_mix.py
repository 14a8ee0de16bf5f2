"""The class-mix probe (``scripts/probe_mix.py``): what it counts and how it reports."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.probe_mix import CHANGES, outcome, report


def test_the_outcome_counts_predicted_shares_and_each_class_s_recall() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1])  # class 2 is never predicted, class 1 takes most
    found = outcome(predicted, labels, 4)  # class 3 is absent: recall 0, not a division by zero
    assert found["accuracy"] == pytest.approx(4 / 6)
    assert found["predicted_share"] == pytest.approx([2 / 6, 4 / 6, 0.0, 0.0])
    assert found["recall"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0])


def test_the_report_gives_each_aim_its_mean_shares_and_recall_next_to_the_true_shares() -> None:
    default, *_, oracle = CHANGES
    runs = {
        change: [
            {"seed": s, "validation": 0.5 + 0.1 * s, "accuracy": 0.5, "predicted_share": [0.5, 0.5], "recall": [r, 1]}
            for s, r in ((0, 0.2), (1, 0.4))
        ]
        for change in (default, oracle)
    }
    machine = {"commit": "abc", "date": "2026-12-05", "cpu": "test"}
    tasks = {"photo-sketch": {"classes": ["dog", "house"], "true_share": [0.9, 0.1], "runs": runs}}
    text = report({"command": "python -m scripts.probe_mix", "machine": machine, "tasks": tasks})
    assert "| true share | | | | 0.90 | 0.10 |" in text
    assert f"| {CHANGES[default]}: share | 2 | 0.5500 ± 0.0707 | 0.500 | 0.50 | 0.50 |" in text
    assert "| … recall | | | | 0.30 | 1.00 |" in text
    assert f"- {CHANGES[oracle]}, seed 1: 0.600; recall 0.40 | 1.00" in text
