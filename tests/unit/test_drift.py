"""Score drift statistics (evaluation/drift.py) against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.drift import decile_bins, ks, psi, quantile_sketch, shares

# Ten values: the k-th has mid-rank (k + 0.5) / 10 in itself, so each is alone in its decile
# bin and every expected share is 0.1.
REF = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]


def test_bins_by_the_reference_deciles() -> None:
    assert decile_bins(REF, REF).tolist() == list(range(10))
    np.testing.assert_allclose(shares(REF, REF), [0.1] * 10)
    # Between two reference values: mid-rank 0.1 (one value below) -> bin 1; 0.2 -> bin 2.
    # Below all of them: 0 -> bin 0; above: 1 -> bin 9.
    assert decile_bins(REF, [0.1, 0.2, -1.0, 2.0]).tolist() == [1, 2, 0, 9]
    # Ties: a value equal to three of the reference's counts their middle.
    assert decile_bins([0.1, 0.5, 0.5, 0.5, 0.9], [0.5]).tolist() == [5]


def test_psi_by_hand() -> None:
    assert psi(REF, REF) == pytest.approx(0.0, abs=1e-12)
    # Everything in the first bin: 0.9 ln(1 / 0.1) from it, and from each of the nine empty
    # bins (floored at 1e-4) (1e-4 - 0.1) ln(1e-4 / 0.1).
    want = 0.9 * math.log(10) + 9 * (1e-4 - 0.1) * math.log(1e-3)
    assert psi(REF, [0.05] * 10) == pytest.approx(want)
    assert want == pytest.approx(8.2831, abs=1e-4)
    # Half in the first bin, half in the last: 2 x 0.4 ln 5 + 8 x (1e-4 - 0.1) ln(1e-3).
    want = 2 * 0.4 * math.log(5) + 8 * (1e-4 - 0.1) * math.log(1e-3)
    assert psi(REF, [0.0, 1.0]) == pytest.approx(want)
    # Two bins swapped shares a little: 0.15 and 0.05 instead of 0.1 and 0.1.
    sample = [0.05] * 3 + [0.15] * 1 + REF[2:] * 2
    # 20 values: bin 0 holds 3 (0.15), bin 1 holds 1 (0.05), the others 2 each (0.1).
    want = 0.05 * math.log(1.5) + (-0.05) * math.log(0.5)
    assert psi(REF, sample) == pytest.approx(want)
    assert want == pytest.approx(0.0549, abs=1e-4)


def test_psi_with_ties_in_the_reference() -> None:
    # An untrained model answers nearly the same for everything: the pile has its bin, and
    # what lies below or above it bins of its own.
    ref = [0.5] * 10
    assert decile_bins(ref, [0.2, 0.5, 0.8]).tolist() == [0, 5, 9]
    assert psi(ref, [0.5] * 4) == pytest.approx(0.0, abs=1e-12)
    # All served above, in bin 9 where the reference has nothing:
    # (1 - 1e-4) ln(1 / 1e-4) + (1e-4 - 1) ln(1e-4 / 1).
    want = 2 * (1 - 1e-4) * math.log(1e4)
    assert psi(ref, [0.9, 0.8]) == pytest.approx(want)


def test_ks_by_hand() -> None:
    assert ks([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert ks([0.1, 0.2], [0.8, 0.9]) == 1.0
    # At 0.2 the reference has reached 2/4, the sample nothing yet.
    assert ks([0.1, 0.2, 0.3, 0.4], [0.25, 0.35]) == pytest.approx(0.5)
    # Sample [0.15]: after 0.15, F_sample = 1 while F_reference = 1/4.
    assert ks([0.1, 0.2, 0.3, 0.4], [0.15]) == pytest.approx(0.75)


def test_quantile_sketch() -> None:
    values = np.arange(1000) / 1000
    sketch = quantile_sketch(values)
    assert len(sketch) == 100 and sketch == sorted(sketch)
    # Level (i + 0.5) / 100 of 0, 0.001, ..., 0.999: 0.999 (i + 0.5) / 100.
    assert sketch[0] == pytest.approx(0.999 * 0.005) and sketch[-1] == pytest.approx(0.999 * 0.995)
    # The sketch stands in for the sample: against the sample itself, next to nothing.
    assert psi(sketch, values) < 0.01 and ks(sketch, values) < 0.01
    with pytest.raises(ValueError):
        quantile_sketch([])
    with pytest.raises(ValueError):
        psi(REF, [])
