"""ROC, AUC with DeLong confidence intervals, Youden thresholds and the rates at a threshold.

NumPy only. `roc_curve` follows scikit-learn's definition point for point (the tests hold
it to scikit-learn to 1e-9); the AUC is the Mann-Whitney statistic with mid-ranks for ties,
which is what the trapezoidal area under that curve equals.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def _binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, np.float64).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1 (drop ignored rows first)")
    return y, s


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): a point per distinct score, highest first, after (0, 0) at
    threshold +inf; a case is called positive when its score >= the threshold."""
    y, s = _binary(labels, scores)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = 1 + last_of_run - tps
    thresholds = s[last_of_run]
    if drop_intermediate and tps.size > 2:
        # Keep only corners: points where the curve changes direction.
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    thresholds = np.r_[np.inf, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    # Each run of equal values [start, end) gets rank (start + end + 1) / 2.
    starts = np.r_[0, np.flatnonzero(np.diff(sx)) + 1]
    ends = np.r_[starts[1:], x.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


@dataclass(frozen=True)
class AUC:
    value: float
    variance: float  # DeLong
    positives: int
    negatives: int

    @property
    def ci95(self) -> tuple[float, float]:
        half = Z95 * float(np.sqrt(max(self.variance, 0.0)))
        return max(0.0, self.value - half), min(1.0, self.value + half)


def delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components (Sun & Xu's fast form): for each positive, the share
    of negatives it outranks (ties half); for each negative, the share of positives above it.
    Their means are the AUC."""
    y, s = _binary(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        raise ValueError(f"AUC needs both classes: {m} positives, {n} negatives")
    both = midranks(np.r_[pos, neg])
    v10 = (both[:m] - midranks(pos)) / n
    v01 = 1.0 - (both[m:] - midranks(neg)) / m
    return v10, v01


def auc(labels: np.ndarray, scores: np.ndarray) -> AUC:
    """Area under the ROC curve with DeLong's variance."""
    v10, v01 = delong_components(labels, scores)
    m, n = v10.size, v01.size
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    return AUC(float(v10.mean()), float(var), m, n)


def auc_many(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row of scores [G, n] against one label vector [n], vectorised: the
    weight search scores thousands of candidate ensembles at once."""
    y = np.asarray(labels, np.float64).ravel()
    s = np.asarray(scores, np.float64)
    g, n = s.shape
    pos = y == 1
    m = int(pos.sum())
    neg_count = n - m
    if m == 0 or neg_count == 0:
        raise ValueError(f"AUC needs both classes: {m} positives, {neg_count} negatives")
    order = np.argsort(s, axis=1)
    sorted_s = np.take_along_axis(s, order, axis=1)
    # Mid-ranks per row: runs of equal values share the mean rank.
    new_run = np.ones((g, n), bool)
    new_run[:, 1:] = sorted_s[:, 1:] != sorted_s[:, :-1]
    run_id = np.cumsum(new_run.ravel()) - 1
    flat_pos = np.tile(np.arange(1, n + 1, dtype=np.float64), g)
    run_sum = np.bincount(run_id, weights=flat_pos)
    run_len = np.bincount(run_id)
    ranks_sorted = (run_sum / run_len)[run_id].reshape(g, n)
    pos_sorted = pos[order]
    rank_sum = (ranks_sorted * pos_sorted).sum(axis=1)
    return (rank_sum - m * (m + 1) / 2.0) / (m * neg_count)


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, J) maximising sensitivity + specificity - 1 on these labels.

    The threshold sits halfway between the lowest score called positive and the next
    score below it, so that the calls it makes on this data survive rounding (the server
    compares in float32) and it does not hug one case's score.
    """
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # the +inf point calls nothing positive
    below = thr[best + 1] if best + 1 < thr.size else thr[best] - 1e-6
    return float((thr[best] + below) / 2.0), float(j[best])


class Rates(msgspec.Struct, frozen=True, kw_only=True):
    threshold: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    accuracy: float
    tp: int
    fp: int
    tn: int
    fn: int


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def rates_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Rates:
    """Confusion counts and rates when `score >= threshold` is called positive."""
    y, s = _binary(labels, scores)
    called = s >= threshold
    tp = int(np.sum(called & (y == 1)))
    fp = int(np.sum(called & (y == 0)))
    fn = int(np.sum(~called & (y == 1)))
    tn = int(np.sum(~called & (y == 0)))
    return Rates(
        threshold=float(threshold),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        accuracy=_ratio(tp + tn, y.size),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


CATEGORICAL_ACCURACY_DEFINITION = (
    "Keras' categorical_accuracy, as the legacy application's training reported it: the share "
    "of images whose highest-probability finding is the first positive finding in the label vector "
    "(an image with no positive finding counts as finding 1, Atelectasis). It ignores every "
    "other positive, so it is not a multi-label accuracy; per-finding accuracy at the "
    "thresholds is in the threshold table."
)


def categorical_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Keras' categorical_accuracy: mean(argmax(labels) == argmax(scores)) over images.

    labels [n, 5] (ignored labels as NaN count as 0), scores [n, 5]."""
    y = np.nan_to_num(np.asarray(labels, np.float64), nan=0.0)
    s = np.asarray(scores, np.float64)
    if y.shape != s.shape or y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be the same [n, k]")
    return float(np.mean(np.argmax(y, axis=1) == np.argmax(s, axis=1)))
