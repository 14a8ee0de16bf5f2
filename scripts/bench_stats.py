"""What every benchmark record carries (commit, command, machine, date) and the statistics its tables use."""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.machine import cpu_name, git_commit

# two-sided 95 % quantiles of Student's t by degrees of freedom (scipy is not a dependency)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
Z_975 = 1.959964


def t_975(df: int) -> float:
    """Student's t 0.975 quantile: the table up to 10 degrees of freedom, beyond it the Cornish–Fisher expansion
    around the normal quantile (Abramowitz & Stegun 26.7.5; within 10⁻³ of the exact value from 11 on)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    if df in T_975:
        return T_975[df]
    z = Z_975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def describe_run() -> dict[str, Any]:
    """Commit, command line, machine and date, for every raw benchmark record."""
    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name(0)}"
    return {
        "commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (n − 1); the std is 0 for a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], *, signed: bool = False) -> str:
    """``mean ± sample std`` to four places, as the benchmark tables print them; ``signed``: the mean with its sign
    (a change)."""
    mean, std = mean_std(values)
    return f"{mean:{'+' if signed else ''}.4f} ± {std:.4f}"


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of ``a − b`` over paired seeds with its 95 % t confidence interval; ``holds`` when it excludes 0."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, std = mean_std(diffs)
    n = len(diffs)
    half = t_975(n - 1) * std / math.sqrt(n) if n > 1 else math.inf
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "holds": float(mean - half > 0)}


def cosine_map(
    queries: torch.Tensor, query_labels: np.ndarray, database: torch.Tensor, database_labels: np.ndarray
) -> float:
    """MAP@all of ranking the database by cosine similarity of continuous features (ties by database index).

    Shape:
        queries ``[Q, D]``, database ``[N, D]``, labels ``[Q]`` / ``[N]``.
    """
    q = torch.nn.functional.normalize(queries.float(), dim=1)
    d = torch.nn.functional.normalize(database.float(), dim=1)
    similarity = (q @ d.T).numpy()
    order = np.argsort(-similarity, axis=1, kind="stable")
    relevant = database_labels[order] == query_labels[:, None]
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision = np.where(relevant, hits / ranks, 0.0).sum(axis=1)
    return float(np.mean(precision / np.maximum(relevant.sum(axis=1), 1)))
