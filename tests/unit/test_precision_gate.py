"""The precision gate on made-up probabilities: tolerance, and calls near a threshold."""

from __future__ import annotations

import numpy as np

from server.runtime.contract import CALL_MARGIN, PRECISION_TOLERANCE
from server.runtime.precision import compare

THRESHOLDS = [0.5] * 5


def check(reference: np.ndarray, candidate: np.ndarray):
    return compare("openvino-cpu-bf16", reference, candidate, THRESHOLDS, "test", 0.1)


def test_small_differences_pass_and_are_recorded_per_finding() -> None:
    ref = np.full((4, 5), 0.2)
    cand = ref.copy()
    cand[:, 3] += 0.004
    c = check(ref, cand)
    assert c.passed and c.calls_differ == 0
    np.testing.assert_allclose(c.max_abs_diff, [0, 0, 0, 0.004, 0], atol=1e-12)
    assert (c.tolerance, c.margin, c.images) == (PRECISION_TOLERANCE, CALL_MARGIN, 4)


def test_a_difference_over_the_tolerance_fails() -> None:
    ref = np.full((2, 5), 0.2)
    cand = ref.copy()
    cand[1, 0] += PRECISION_TOLERANCE * 1.5
    assert not check(ref, cand).passed


def test_a_flipped_call_next_to_the_threshold_is_allowed() -> None:
    ref = np.full((1, 5), 0.2)
    ref[0, 2] = 0.5 - CALL_MARGIN / 2  # absent in fp32, by a hair
    cand = ref.copy()
    cand[0, 2] = 0.5 + CALL_MARGIN / 4  # present in the candidate
    c = check(ref, cand)
    assert c.passed and c.calls_differ == 1 and c.calls_differ_outside_margin == 0


def test_a_flipped_call_away_from_the_threshold_fails() -> None:
    ref = np.full((1, 5), 0.2)
    ref[0, 1] = 0.5 - 2 * CALL_MARGIN  # clearly absent in fp32
    cand = ref.copy()
    cand[0, 1] = 0.5 + 0.001  # present in the candidate
    c = check(ref, cand)
    assert not c.passed and c.calls_differ == 1 and c.calls_differ_outside_margin == 1
