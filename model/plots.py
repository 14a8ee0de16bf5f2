"""PNG figures for a run: precision-recall curves and training-loss curves.

Figures are built as :class:`matplotlib.figure.Figure` objects and written with the Agg renderer, so nothing
touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from model.metrics import PRCurve

__all__ = ["plot_history", "plot_pr_curves"]

_MAX_COLUMNS = 3


def plot_pr_curves(
    curves: Mapping[str, PRCurve], path: Path, title: str = "Precision-recall (Hamming radius sweep)"
) -> None:
    """Draw one precision-recall curve per entry (one point per Hamming radius) and save a PNG.

    Points where precision or recall is NaN (recall: no query has a relevant item) are left out.

    Args:
        curves: legend label → curve, e.g. ``{"mnist→usps 64b": metrics.pr_curve}``.
        path: PNG to write; missing parent folders are created.
        title: figure title.

    Raises:
        ValueError: ``curves`` is empty.
    """
    if not curves:
        raise ValueError("plot_pr_curves needs at least one curve")
    figure = Figure(figsize=(6.0, 5.0))
    axes = figure.add_subplot()
    for label, curve in curves.items():
        keep = np.isfinite(curve.precision) & np.isfinite(curve.recall)
        axes.plot(curve.recall[keep], curve.precision[keep], marker="o", markersize=3, label=label)
    axes.set_xlim(0.0, 1.02)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    _save(figure, path)


def plot_history(rows: Sequence[Mapping[str, float]], path: Path, title: str = "Training losses") -> None:
    """Plot every numeric column of the training history against ``step``, one small axis per column.

    Columns that never hold a finite number are skipped; rows lacking a column leave a gap in that column
    only. Without ``step`` the row index is used. An empty history still writes a (labelled) figure.

    Args:
        rows: history rows, e.g. ``{"step": 10, "loss": 1.3, "pairwise": 0.8, "grl_coeff": 0.1, "lr": 1e-3}``.
        path: PNG to write; missing parent folders are created.
        title: figure title.
    """
    columns = _numeric_columns(rows)
    ncols = max(1, min(_MAX_COLUMNS, len(columns)))
    nrows = max(1, math.ceil(len(columns) / ncols))
    figure = Figure(figsize=(4.0 * ncols, 2.8 * nrows), layout="constrained")
    figure.suptitle(title)
    if not columns:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "no history recorded", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
    for position, (name, (steps, values)) in enumerate(columns.items(), start=1):
        axes = figure.add_subplot(nrows, ncols, position)
        axes.plot(steps, values, linewidth=1.2)
        axes.set_title(name, fontsize="medium")
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    _save(figure, path)


def _numeric_columns(rows: Sequence[Mapping[str, float]]) -> dict[str, tuple[list[float], list[float]]]:
    """Column name → (steps, finite values) in first-seen order; ``step`` is the x axis, not a column."""
    columns: dict[str, tuple[list[float], list[float]]] = {}
    for index, row in enumerate(rows):
        step = _as_number(row.get("step", index))
        x = float(index) if step is None else step
        for name, raw in row.items():
            value = _as_number(raw)
            if name == "step" or value is None:
                continue
            steps, values = columns.setdefault(name, ([], []))
            steps.append(x)
            values.append(value)
    return columns


def _as_number(value: object) -> float | None:
    """A finite float, or ``None`` for NaN, infinities, booleans and anything non-numeric."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=120)
