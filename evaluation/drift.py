"""Score drift statistics, pure: how far the probabilities served for a finding have moved
from a reference distribution (the calibration set's).

- The reference is kept as a quantile sketch: its values at levels (i + 0.5) / 100, a
  hundred equally weighted points that stand for the whole set (`quantile_sketch`).
- Population stability index over 10 bins by the reference's deciles: a value x falls in
  bin floor(10 u), u = (F(x-) + F(x)) / 2 its mid-rank in the reference (F: the
  reference's empirical distribution function), so bin k holds what lies between the
  reference's k-th and (k+1)-th deciles. Mid-ranks keep ties honest: when the reference
  piles up on one value (an untrained model answering alike for everything), values
  below and above the pile land in bins of their own instead of sharing its bin. Then
  the sum over bins of (served - expected) * ln(served / expected), shares floored at
  1e-4 so that an empty bin counts as very unlikely rather than impossible. Below 0.1:
  no real change; 0.1 to 0.2: a moderate shift; above 0.2: a large one.
- Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical
  distribution functions (0: the same; 1: no overlap).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVELS = 100
BINS = 10
FLOOR = 1e-4


def quantile_sketch(values: Sequence[float] | np.ndarray, levels: int = LEVELS) -> list[float]:
    """The values' quantiles at (i + 0.5) / levels, i = 0 .. levels - 1 (linear
    interpolation): a fixed-size stand-in for the whole sample."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("no values to sketch")
    return [float(q) for q in np.quantile(v, (np.arange(levels) + 0.5) / levels)]


def decile_bins(
    reference: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, bins: int = BINS
) -> np.ndarray:
    """Each value's bin, 0 .. bins-1, by its mid-rank in the reference (exact integer
    arithmetic: 2 n u = #(reference < x) + #(reference <= x))."""
    ref = np.sort(np.asarray(reference, np.float64))
    v = np.asarray(values, np.float64)
    twice = np.searchsorted(ref, v, side="left") + np.searchsorted(ref, v, side="right")
    return np.minimum(twice * bins // (2 * ref.size), bins - 1)


def shares(
    reference: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, bins: int = BINS
) -> np.ndarray:
    """Each bin's share of `values`."""
    counts = np.bincount(decile_bins(reference, values, bins), minlength=bins)
    return counts / max(1, np.asarray(values).size)


def psi(
    reference: Sequence[float] | np.ndarray,
    sample: Sequence[float] | np.ndarray,
    bins: int = BINS,
    floor: float = FLOOR,
) -> float:
    """Population stability index of `sample` against `reference`, bins at the
    reference's deciles."""
    ref = np.asarray(reference, np.float64)
    got = np.asarray(sample, np.float64)
    if ref.size == 0 or got.size == 0:
        raise ValueError("the population stability index needs values on both sides")
    expected = np.maximum(shares(ref, ref, bins), floor)
    actual = np.maximum(shares(ref, got, bins), floor)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(reference: Sequence[float] | np.ndarray, sample: Sequence[float] | np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: max |F_reference(x) - F_sample(x)|."""
    a = np.sort(np.asarray(reference, np.float64))
    b = np.sort(np.asarray(sample, np.float64))
    if a.size == 0 or b.size == 0:
        raise ValueError("the KS statistic needs values on both sides")
    points = np.concatenate([a, b])
    fa = np.searchsorted(a, points, side="right") / a.size
    fb = np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))
