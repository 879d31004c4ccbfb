"""The evaluation metrics against scikit-learn and against their textbook definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from evaluation.metrics import (
    auc,
    auc_many,
    categorical_accuracy,
    delong_components,
    midranks,
    rates_at,
    roc_curve,
    youden_threshold,
)


def random_cases(count: int, seed: int = 0):
    """Binary labels and scores of all shapes: tiny, imbalanced, heavy ties, continuous."""
    rng = np.random.default_rng(seed)
    made = 0
    while made < count:
        n = int(rng.integers(2, 500))
        y = (rng.random(n) < rng.uniform(0.02, 0.98)).astype(np.int64)
        if y.min() == y.max():
            continue
        kind = made % 3
        if kind == 0:
            s = rng.random(n)
        elif kind == 1:  # few distinct values: many ties
            s = np.round(rng.random(n) * rng.integers(1, 8)) / 8
        else:  # informative, float32 like the engine's outputs
            s = (y * rng.uniform(0, 2) + rng.normal(0, 1, n)).astype(np.float32)
        made += 1
        yield y, s


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_and_roc_curve_agree_with_scikit_learn(seed: int) -> None:
    for y, s in random_cases(150, seed):
        assert abs(auc(y, s).value - roc_auc_score(y, s)) < 1e-9
        for drop in (True, False):
            fpr, tpr, thr = roc_curve(y, s, drop_intermediate=drop)
            sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=drop)
            assert fpr.shape == sk_fpr.shape
            np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-9)
            np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-9)
            np.testing.assert_allclose(thr, sk_thr, rtol=0, atol=1e-9)


def test_auc_many_scores_every_row_like_one_auc() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.3).astype(float)
    rows = np.round(rng.random((40, 300)) * 6) / 6  # ties within rows
    rows[5] = 0.5  # a constant row: AUC 0.5
    got = auc_many(y, rows)
    expected = [roc_auc_score(y, r) for r in rows]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_midranks_share_ranks_within_ties() -> None:
    np.testing.assert_array_equal(midranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])


def test_delong_variance_matches_its_definition() -> None:
    """Sun & Xu's fast components equal the O(m n) kernel averages of DeLong et al."""
    rng = np.random.default_rng(4)
    for y, s in random_cases(20, 5):
        pos, neg = s[y == 1].astype(float), s[y == 0].astype(float)
        psi = (pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])
        v10, v01 = delong_components(y, s)
        np.testing.assert_allclose(v10, psi.mean(axis=1), atol=1e-12)
        np.testing.assert_allclose(v01, psi.mean(axis=0), atol=1e-12)
        m, n = pos.size, neg.size
        expected = (np.var(psi.mean(1), ddof=1) / m if m > 1 else 0) + (
            np.var(psi.mean(0), ddof=1) / n if n > 1 else 0
        )
        assert abs(auc(y, s).variance - expected) < 1e-12
    # The interval narrows as the sample grows and holds the AUC.
    y = (rng.random(4000) < 0.3).astype(int)
    s = y + rng.normal(0, 1.2, y.size)
    small, large = auc(y[:200], s[:200]), auc(y, s)
    assert large.ci95[1] - large.ci95[0] < small.ci95[1] - small.ci95[0]
    assert large.ci95[0] < large.value < large.ci95[1]


def test_youden_threshold_is_the_best_cut_and_sits_between_scores() -> None:
    for y, s in random_cases(60, 6):
        s = s.astype(np.float32).astype(np.float64)  # the engine's outputs are float32
        t, j = youden_threshold(y, s)
        best = max(
            rates_at(y, s, c).sensitivity + rates_at(y, s, c).specificity - 1 for c in np.unique(s)
        )
        r = rates_at(y, s, t)
        assert abs(j - best) < 1e-12
        assert abs(r.sensitivity + r.specificity - 1 - best) < 1e-12
        assert t not in set(s.tolist())  # halfway between two scores, never on one
        # float32 rounding (the server's comparison) changes no call.
        assert np.array_equal(s.astype(np.float32) >= np.float32(t), s >= t)


def test_rates_at_a_threshold() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.6, 0.6])
    r = rates_at(y, s, 0.6)  # called: 0.9 0.8 0.7 0.6 0.6
    assert (r.tp, r.fp, r.tn, r.fn) == (3, 2, 2, 1)
    assert r.sensitivity == 0.75 and r.specificity == 0.5
    assert r.ppv == 0.6 and r.npv == pytest.approx(2 / 3) and r.accuracy == 5 / 8


def test_categorical_accuracy_is_keras_definition() -> None:
    labels = np.array([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, np.nan, 1, 0]])
    scores = np.array(
        [
            [0.1, 0.2, 0.3, 0.4, 0.9],  # argmax 4; first positive is 1: wrong
            [0.9, 0.1, 0.1, 0.1, 0.1],  # right
            [0.5, 0.1, 0.1, 0.1, 0.1],  # no positive counts as class 0: right
            [0.1, 0.1, 0.1, 0.8, 0.1],  # NaN counts as 0: first positive is 3: right
        ]
    )
    assert categorical_accuracy(labels, scores) == 0.75


def test_metrics_refuse_bad_labels() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        auc(np.array([1, 0, -1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array([1, 1]), np.array([0.1, 0.2]))
