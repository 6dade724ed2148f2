"""Small-sample statistics for method comparisons over seeds.

* ``mean_interval``: Student-t confidence interval of a mean over n runs,
  ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)`` with ``s`` the sample standard deviation (n-1).
* ``paired_difference``: the same interval over per-seed differences ``a_s - b_s`` (paired t;
  both methods ran with the same seed, hence the same initialisation RNG and data order).
* ``bootstrap_correlation``: Pearson correlation of (x, y) points that come in groups (e.g. all
  layers of one checkpoint), with a percentile bootstrap interval that resamples whole groups.

No scipy: the t quantile comes from bisection on the t CDF, integrated with Simpson's rule.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with a two-sided ``level`` interval [low, high] (NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (False when it is undefined)."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        def finite(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "mean": self.mean,
            "low": finite(self.low),
            "high": finite(self.high),
            "n": self.n,
            "sd": finite(self.sd),
            "level": self.level,
        }


def t_pdf(t: float, df: int) -> float:
    """Density of Student's t with ``df`` degrees of freedom."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))


def t_cdf(t: float, df: int, intervals: int = 2000) -> float:
    """P(T <= t): 0.5 plus Simpson's rule of the density over [0, |t|] (error < 1e-9 for |t| < 100)."""
    x = abs(t)
    h = x / intervals
    s = t_pdf(0.0, df) + t_pdf(x, df)
    s += sum((4 if i % 2 else 2) * t_pdf(i * h, df) for i in range(1, intervals))
    half = s * h / 3
    return 0.5 + half if t >= 0 else 0.5 - half


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t (0.5 < p < 1), e.g. t_quantile(0.975, 4) = 2.776."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of ``values`` (one value per seed)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval of no values")
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan, level)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, level)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> Interval:
    """Interval of mean(a_s - b_s) over the seeds ``s`` both mappings have (seed -> value)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("paired_difference: the two methods share no seed")
    return mean_interval([a[s] - b[s] for s in seeds], level)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation; NaN when it is undefined (< 2 points or a constant coordinate)."""
    n = len(xs)
    if n < 2:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    if sxx <= 0 or syy <= 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def bootstrap_correlation(
    groups: Sequence[Sequence[tuple[float, float]]],
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(r, low, high): Pearson r of all points, and the percentile bootstrap interval that draws
    ``len(groups)`` groups with replacement ``resamples`` times. Resamples whose correlation is
    undefined (all drawn points identical in x or y) are left out of the percentiles."""
    points = [p for g in groups for p in g]
    r = pearson([p[0] for p in points], [p[1] for p in points])
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        pts = [p for g in rng.choices(groups, k=len(groups)) for p in g]
        value = pearson([p[0] for p in pts], [p[1] for p in pts])
        if math.isfinite(value):
            draws.append(value)
    if not draws:
        return r, math.nan, math.nan
    draws.sort()
    tail = (1 - level) / 2
    return r, _percentile(draws, tail), _percentile(draws, 1 - tail)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of already sorted values."""
    pos = q * (len(sorted_values) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (pos - i) * (sorted_values[j] - sorted_values[i])


def format_interval(iv: Interval, digits: int = 2, signed: bool = False) -> str:
    """``84.50 [82.77, 86.23]`` (``+0.10 [-1.2, 1.4]`` with ``signed``); no bracket when n < 2."""
    spec = f"{'+' if signed else ''}.{digits}f"
    text = format(iv.mean, spec)
    if math.isfinite(iv.low):
        text += f" [{format(iv.low, spec)}, {format(iv.high, spec)}]"
    return text
