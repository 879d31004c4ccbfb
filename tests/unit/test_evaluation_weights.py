"""The weight search: its grid, its choice, and the cross-validated comparison."""

from __future__ import annotations

from math import comb

import numpy as np

from evaluation.weights import fit, fit_finding, simplex_grid, stratified_folds


def test_simplex_grid_is_every_non_negative_split() -> None:
    grid = simplex_grid(5, 0.05)
    assert grid.shape == (comb(24, 4), 5)
    assert (grid >= 0).all()
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert len({tuple(row) for row in np.round(grid * 20).astype(int)}) == len(grid)
    assert simplex_grid(2, 0.5).tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]


def members(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels, and three members: informative, confident noise, and nearly constant."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(float)
    good = 1 / (1 + np.exp(-(3 * y - 1.5 + rng.normal(0, 1, n))))
    noise = 1 / (1 + np.exp(-rng.normal(0, 2, n)))
    flat = 0.3 + rng.normal(0, 1e-4, n)
    return y, np.stack([good, noise, flat], axis=1)


def test_fit_weighs_the_informative_member() -> None:
    y, p = members(400, 0)
    w = fit(y, p, simplex_grid(3, 0.05))
    assert w[0] >= 0.9 and w[1] <= 0.05


def test_stratified_folds_split_each_class_evenly() -> None:
    y = np.r_[np.ones(23), np.zeros(57)]
    folds = stratified_folds(y, 5, seed=1)
    for f in range(5):
        assert np.sum((folds == f) & (y == 1)) in (4, 5)
        assert np.sum((folds == f) & (y == 0)) in (11, 12)


def test_fit_finding_compares_on_held_out_folds() -> None:
    y, p = members(300, 1)
    previous = np.array([0.2, 0.6, 0.2])  # leans on the noise
    result = fit_finding(y, p, {"previous": previous, "equal": np.full(3, 1 / 3)}, folds=5)
    assert result.weights_from == "fitted" and result.folds == 5
    assert result.held_out["fitted"][0] > result.held_out["previous"][0] + 0.1
    assert result.weights[0] > previous[0] and result.weights[1] < previous[1]
    # With a label kept out (NaN) the rest still fit; with too few positives nothing does.
    y_nan = y.copy()
    y_nan[:10] = np.nan
    assert fit_finding(y_nan, p, {"previous": previous}).positives == int(np.nansum(y_nan))
    few = np.zeros(300)
    few[0] = 1
    kept = fit_finding(few, p, {"previous": previous})
    assert kept.weights_from.startswith("previous (too few labels")
    np.testing.assert_array_equal(kept.weights, previous)


def test_previous_weights_stay_when_nothing_is_better() -> None:
    y, p = members(300, 2)
    p[:, 2] = 0.3  # exactly constant: any weight on it ranks like the informative member
    best = np.array([1.0, 0.0, 0.0])
    result = fit_finding(y, p, {"previous": best}, folds=5)
    assert result.weights_from == "previous"
    np.testing.assert_array_equal(result.weights, best)
