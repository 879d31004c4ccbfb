"""Per-finding ensemble weights fitted on labelled data, judged on folds the fit did not see.

Method: for each finding, every non-negative weight vector on a simplex grid (step 0.05:
10,626 candidates for five members) is scored by the AUC of the weighted average on the
training folds; among those within 0.001 of the best AUC, the one with the lowest log-loss
is kept.
An exhaustive grid needs no optimiser, is non-negative and normalised by construction, and
is deterministic. Stratified K-fold cross-validation measures the fitted weights on each
held-out fold beside the weights served now, the legacy application's hand-set matrix and
equal weights;
the weighting with the best held-out AUC is the one calibrate serves.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from evaluation.metrics import auc_many

CHUNK = 2048  # candidates scored at once: bounds memory at CHUNK x images floats
AUC_TOLERANCE = 1e-3  # AUCs closer than this are not told apart (see `fit`)


def simplex_grid(members: int, step: float = 0.05) -> np.ndarray:
    """All weight vectors [G, members] with entries in multiples of `step` summing to 1."""
    k = round(1.0 / step)
    if members < 1 or k < 1 or not np.isclose(k * step, 1.0):
        raise ValueError(f"grid step {step} must divide 1 (e.g. 0.1, 0.05)")
    rows = []
    # Stars and bars: choose members-1 cut points among k + members - 1 slots.
    for cuts in itertools.combinations(range(k + members - 1), members - 1):
        edges = (-1, *cuts, k + members - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(members)])
    return np.asarray(rows, np.float64) / k


def fit(labels: np.ndarray, member_scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The grid row [M] whose weighted average of member_scores [n, M] ranks best.

    Candidates within AUC_TOLERANCE of the best AUC are ranked by log-loss: members whose
    outputs barely vary leave the AUC flat whatever their weight, and the log-loss then
    prefers the weights whose average is also a good probability."""
    aucs = np.concatenate(
        [
            auc_many(labels, grid[i : i + CHUNK] @ member_scores.T)
            for i in range(0, len(grid), CHUNK)
        ]
    )
    near = np.flatnonzero(aucs >= aucs.max() - AUC_TOLERANCE)
    p = np.clip(grid[near] @ member_scores.T, 1e-7, 1 - 1e-7)
    loss = -(labels * np.log(p) + (1 - labels) * np.log1p(-p)).mean(axis=1)
    return grid[near[np.argmin(loss)]]


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold index per case, each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    out = np.empty(labels.size, np.int64)
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        out[rng.permutation(idx)] = np.arange(idx.size) % folds
    return out


@dataclass(frozen=True)
class FindingFit:
    weights: np.ndarray  # [M], normalised: what calibrate will serve for this finding
    weights_from: str  # "fitted", "previous", "legacy", "equal", or why nothing was fitted
    fitted: np.ndarray | None  # [M] fitted on all rows (None when there were too few labels)
    held_out: dict[str, tuple[float, float]]  # weighting -> (mean, sd) AUC over folds
    folds: int
    positives: int
    negatives: int


def fit_finding(
    labels: np.ndarray,
    member_scores: np.ndarray,
    candidates: dict[str, np.ndarray],
    folds: int = 5,
    grid_step: float = 0.05,
    seed: int = 0,
) -> FindingFit:
    """Fit one finding's weights; `candidates` holds the fixed weightings to compare with
    ("previous" first: it wins ties, so calibrate changes nothing it cannot improve)."""
    keep = ~np.isnan(labels)
    y, p = labels[keep], member_scores[keep]
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    k = min(folds, pos, neg)
    if k < 2:
        return FindingFit(
            candidates["previous"],
            f"previous (too few labels to fit: {pos} positive, {neg} negative)",
            None,
            {},
            0,
            pos,
            neg,
        )
    grid = simplex_grid(p.shape[1], grid_step)
    fold = stratified_folds(y, k, seed)
    per_fold: dict[str, list[float]] = {"fitted": [], **{name: [] for name in candidates}}
    for f in range(k):
        train, test = fold != f, fold == f
        w = fit(y[train], p[train], grid)
        for name, weights in (("fitted", w), *candidates.items()):
            per_fold[name].append(float(auc_many(y[test], (p[test] @ weights)[None])[0]))
    held_out = {name: (float(np.mean(v)), float(np.std(v, ddof=1))) for name, v in per_fold.items()}
    fitted = fit(y, p, grid)
    order = [*candidates, "fitted"]  # earlier wins ties: prefer not to change
    best = max(order, key=lambda name: (round(held_out[name][0], 12), -order.index(name)))
    weights = fitted if best == "fitted" else candidates[best]
    return FindingFit(weights, best, fitted, held_out, k, pos, neg)
