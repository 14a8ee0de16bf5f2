"""The benchmark tables' statistics (``scripts/bench_stats.py``): Student's t quantiles and paired intervals."""

from __future__ import annotations

import math
import statistics

import pytest

from scripts.bench_stats import paired_difference, t_975

# Student's t 0.975 quantiles (scipy.stats.t.ppf(0.975, df), four decimals)
EXACT = {1: 12.7062, 4: 2.7764, 10: 2.2281, 11: 2.2010, 15: 2.1314, 19: 2.0930, 30: 2.0423, 60: 2.0003, 120: 1.9799}


@pytest.mark.parametrize("df", sorted(EXACT))
def test_t_quantiles_match_student_s_t_beyond_the_table_too(df: int) -> None:
    assert t_975(df) == pytest.approx(EXACT[df], abs=1e-3)


def test_no_t_quantile_without_a_degree_of_freedom() -> None:
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_975(0)


def test_a_twenty_seed_interval_uses_t_with_19_degrees_of_freedom_not_the_normal_quantile() -> None:
    a = [0.5 + 0.01 * (i % 5) for i in range(20)]
    b = [0.49] * 20
    diff = paired_difference(a, b)
    std = statistics.stdev(x - y for x, y in zip(a, b, strict=True))
    assert diff["n"] == 20 and diff["mean"] == pytest.approx(statistics.fmean(a) - 0.49)
    assert diff["high"] - diff["mean"] == pytest.approx(2.0930 * std / math.sqrt(20), rel=1e-3)
