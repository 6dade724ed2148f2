"""Seed statistics (vlmtune.analysis.stats) against values computed by hand / from t tables."""

from __future__ import annotations

import math

import pytest

from vlmtune.analysis.stats import (
    bootstrap_correlation,
    format_interval,
    mean_interval,
    paired_difference,
    pearson,
    t_quantile,
)


@pytest.mark.parametrize(
    ("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)]
)
def test_t_quantile_matches_the_table(df, expected) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_other_levels() -> None:
    assert t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-4)  # 90% two-sided
    assert t_quantile(0.995, 2) == pytest.approx(9.9248, abs=1e-4)  # 99% two-sided
    with pytest.raises(ValueError):
        t_quantile(0.4, 3)


def test_mean_interval_by_hand() -> None:
    # mean 3, s = sqrt(2.5), s/sqrt(5) = 0.707107, t(0.975, 4) = 2.776445 -> half width 1.963243
    iv = mean_interval([1, 2, 3, 4, 5])
    assert (iv.mean, iv.n) == (3, 5)
    assert iv.sd == pytest.approx(math.sqrt(2.5))
    assert iv.low == pytest.approx(1.036757, abs=1e-5) and iv.high == pytest.approx(4.963243, abs=1e-5)
    assert iv.excludes_zero
    one = mean_interval([7.0])
    assert one.mean == 7.0 and math.isnan(one.low) and not one.excludes_zero
    assert format_interval(one) == "7.00"


def test_paired_difference_of_the_issue_seeds() -> None:
    # issue 25: vit-lora / vit-dora with train.seed=1..5
    lora = dict(zip(range(1, 6), [85.52, 83.74, 84.41, 82.63, 86.19], strict=True))
    dora = dict(zip(range(1, 6), [83.52, 84.19, 85.97, 85.52, 83.30], strict=True))
    # differences -2.00, 0.45, 1.56, 2.89, -2.89: mean 0.002, s = sqrt(23.34028 / 4) = 2.415589, half = 2.776445 * s / sqrt(5)
    iv = paired_difference(dora, lora)
    assert iv.mean == pytest.approx(0.002, abs=1e-9)
    assert iv.sd == pytest.approx(2.415589, abs=1e-5)
    assert iv.high - iv.mean == pytest.approx(2.999351, abs=1e-5)
    assert not iv.excludes_zero
    assert format_interval(iv, signed=True) == "+0.00 [-3.00, +3.00]"
    # only shared seeds are paired
    assert paired_difference({0: 1.0, 1: 2.0, 2: 9.0}, {0: 0.0, 1: 0.0}).mean == 1.5
    with pytest.raises(ValueError, match="no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_pearson_by_hand() -> None:
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3])) and math.isnan(pearson([1], [1]))


def test_bootstrap_correlation_resamples_groups() -> None:
    # every point on y = 2x + 1: every resample with two distinct x has r = 1
    line = [[(float(x), 2.0 * x + 1), (x + 0.5, 2.0 * (x + 0.5) + 1)] for x in range(6)]
    r, low, high = bootstrap_correlation(line, resamples=200)
    assert r == pytest.approx(1.0) and low == pytest.approx(1.0) and high == pytest.approx(1.0)
    # noisy groups: the interval contains the point estimate, is reproducible, and is wide for 5 groups
    groups = [[(1, 1), (2, 3)], [(3, 2), (4, 5)], [(5, 4), (6, 4)], [(7, 9), (8, 6)], [(9, 7), (10, 10)]]
    r, low, high = bootstrap_correlation(groups, resamples=500, seed=1)
    assert low < r < high and high - low > 0.05
    assert bootstrap_correlation(groups, resamples=500, seed=1) == (r, low, high)
