"""Intended use: frontal chest radiographs. A DICOM that says otherwise is refused unless
forced; PNG and JPEG say nothing and are not judged."""

from __future__ import annotations

import numpy as np
import pytest

from server.errors import UnprocessableInput
from server.runtime.decode import DecodedImage
from server.runtime.intended_use import check, concerns


def dicom(**tags: object) -> DecodedImage:
    base: dict[str, object] = {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}
    base.update(tags)
    return DecodedImage(
        np.zeros((4, 4), np.uint8),
        "dicom",
        4,
        4,
        12,
        [],
        {k: v for k, v in base.items() if v is not None},
    )


def codes(image: DecodedImage) -> list[str]:
    return [c.code for c in concerns(image)]


@pytest.mark.parametrize(
    "tags",
    [
        {},
        {"Modality": "DX", "ViewPosition": "AP"},
        {"BodyPartExamined": None, "ViewPosition": None},  # often absent: not held against it
        {"BodyPartExamined": "THORAX"},
        {"ViewPosition": None, "PatientOrientation": "L\\F"},
    ],
)
def test_frontal_chest_radiographs_are_within_the_intended_use(tags: dict) -> None:
    assert codes(dicom(**tags)) == []


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"ViewPosition": "LL"}, ["lateral_view"]),
        ({"ViewPosition": "lateral"}, ["lateral_view"]),
        ({"ViewPosition": None, "PatientOrientation": "A\\F"}, ["lateral_view"]),
        ({"ViewPosition": "RLO"}, ["oblique_view"]),
        ({"BodyPartExamined": "KNEE"}, ["not_chest"]),
        ({"Modality": "CT"}, ["not_radiograph"]),
        ({"Modality": None}, ["not_radiograph"]),
        (
            {"Modality": "MR", "BodyPartExamined": "HEAD", "ViewPosition": "RL"},
            ["not_radiograph", "not_chest", "lateral_view"],
        ),
    ],
)
def test_what_a_dicom_says_it_is_decides(tags: dict, expected: list[str]) -> None:
    assert codes(dicom(**tags)) == expected


def test_pngs_and_jpegs_are_not_judged() -> None:
    image = DecodedImage(np.zeros((4, 4), np.uint8), "png", 4, 4, 8)
    assert concerns(image) == []
    check(image, force=False)


def test_refused_unless_forced_and_forced_answers_say_so() -> None:
    image = dicom(ViewPosition="LL", BodyPartExamined="KNEE")
    with pytest.raises(UnprocessableInput) as refused:
        check(image, force=False)
    assert refused.value.code == "outside_intended_use"
    assert "ViewPosition LL" in refused.value.message and "force=true" in refused.value.message
    assert [c["code"] for c in refused.value.detail["concerns"]] == ["not_chest", "lateral_view"]
    assert image.notes == []
    check(image, force=True)
    assert len(image.notes) == 1 and "outside the intended use" in image.notes[0]
