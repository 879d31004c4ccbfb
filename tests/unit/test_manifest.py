"""The manifest schema without a repository: weights normalisation, a missing manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.runtime.manifest import FINDINGS, RepositoryError, load_manifest, normalise_weights


def test_weights_are_normalised_per_finding() -> None:
    seed = [
        [0.50, 0.30, 1.00, 1.10, 1.00],
        [0.40, 1.00, 0.70, 0.00, 0.75],
        [1.50, 0.20, 1.00, 0.10, 0.40],
        [0.80, 0.50, 0.90, 0.00, 0.75],
        [0.80, 0.50, 0.60, 0.00, 0.10],
    ]
    out = normalise_weights(seed)
    for d in range(len(FINDINGS)):
        assert sum(row[d] for row in out) == pytest.approx(1.0)
    # Atelectasis column sums to 4.0: DenseNet-121's 1.5 becomes 0.375.
    assert out[2][0] == pytest.approx(1.5 / 4.0)
    # Edema: only Xception (1.1) and DenseNet-121 (0.1) vote.
    assert out[0][3] == pytest.approx(1.1 / 1.2)
    assert out[1][3] == 0.0
    assert seed[2][0] == 1.5, "the input matrix is left as it was"


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([[1, 1, 1, 1]], "members x 5"),
        ([], "members x 5"),
        ([[1, -1, 1, 1, 1]], "non-negative"),
        ([[1, 1, 0, 1, 1], [1, 1, 0, 1, 1]], "Consolidation sum to 0"),
    ],
)
def test_bad_weights_are_refused(weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise_weights(weights)


def test_missing_manifest_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="chexray convert"):
        load_manifest(tmp_path)
