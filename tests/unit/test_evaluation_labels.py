"""Reading labelled CSVs: CheXpert's format, a plain one, label policies and options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.labels import DEFAULT_POLICY, LabelError, parse_policy, read_labelled_csv
from tests.support.labelled_set import HEADER


def chexpert_csv(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    lines = [",".join(HEADER)]
    for row in rows:
        lines.append(",".join(row.get(h, "") for h in HEADER))
    path = tmp_path / "CheXpert-v1.0-small" / "valid.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS = [
    {
        "Path": "CheXpert-v1.0-small/valid/p1/study1/view1_frontal.jpg",
        "Frontal/Lateral": "Frontal",
        "Atelectasis": "-1.0",
        "Cardiomegaly": "1.0",
        "Edema": "-1.0",
        "Pleural Effusion": "-1.0",
        "Consolidation": "0.0",
    },
    {
        "Path": "CheXpert-v1.0-small/valid/p2/study1/view1_lateral.jpg",
        "Frontal/Lateral": "Lateral",
        "Consolidation": "1.0",
    },
    {
        "Path": "CheXpert-v1.0-small/valid/p3/study1/view1_frontal.jpg",
        "Frontal/Lateral": "Frontal",
    },
]


def test_chexpert_default_policy_blanks_and_paths(tmp_path: Path) -> None:
    csv_path = chexpert_csv(tmp_path, ROWS)
    data = read_labelled_csv(csv_path, tmp_path)
    assert data.kind == "chexpert" and data.rows == 3 and len(data.paths) == 3
    # FINDINGS order: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion.
    # U-Ones for Atelectasis and Edema, U-Zeros for the rest; blanks are negative.
    np.testing.assert_array_equal(data.labels[0], [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(data.labels[1], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(data.labels[2], [0, 0, 0, 0, 0])
    assert data.paths[0] == tmp_path / "CheXpert-v1.0-small/valid/p1/study1/view1_frontal.jpg"
    # The data set's own folder works as the root too, once the images are there.
    (tmp_path / "CheXpert-v1.0-small/valid/p1/study1").mkdir(parents=True)
    (tmp_path / "CheXpert-v1.0-small/valid/p1/study1/view1_frontal.jpg").write_bytes(b"x")
    inside = read_labelled_csv(csv_path, tmp_path / "CheXpert-v1.0-small")
    assert inside.paths[0] == data.paths[0]


def test_policies_frontal_only_and_limit(tmp_path: Path) -> None:
    csv_path = chexpert_csv(tmp_path, ROWS)
    ignore = read_labelled_csv(csv_path, tmp_path, parse_policy(["ignore"]), frontal_only=True)
    assert len(ignore.paths) == 2 and ignore.skipped == {"lateral view": 1}
    assert np.isnan(ignore.labels[0, [0, 3, 4]]).all() and ignore.labels[0, 1] == 1
    assert ignore.counts()["Atelectasis"] == (0, 1, 1)
    mixed = parse_policy(["zeros", "Pleural_Effusion=U-Ones"])
    assert mixed["Atelectasis"] == "zeros" and mixed["Pleural Effusion"] == "ones"
    data = read_labelled_csv(csv_path, tmp_path, mixed, limit=1)
    np.testing.assert_array_equal(data.labels[0], [0, 1, 0, 0, 1])
    assert data.skipped == {"over --limit": 2}


def test_plain_csv(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(
        "path,atelectasis,cardiomegaly,consolidation,edema,pleural_effusion\n"
        "a.png,1,0,,-1,1\n"
        "/abs/b.png,0,0,0,0,0\n"
    )
    data = read_labelled_csv(path, policy=dict(DEFAULT_POLICY))
    assert data.kind == "plain"
    assert data.paths == [tmp_path / "a.png", Path("/abs/b.png")]
    np.testing.assert_array_equal(data.labels[0], [1, 0, 0, 1, 1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,Atelectasis\nx,1\n", "no 'Path'"),
        ("path,Atelectasis\nx,1\n", "no column for 'Cardiomegaly'"),
        (
            "path,Atelectasis,Cardiomegaly,Consolidation,Edema,Pleural Effusion\nx,2,0,0,0,0\n",
            "label '2'",
        ),
        ("path,Atelectasis,Cardiomegaly,Consolidation,Edema,Pleural Effusion\n", "no rows"),
    ],
)
def test_bad_csvs_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelError, match=message):
        read_labelled_csv(path)


def test_bad_policy_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="one of"):
        parse_policy(["Edema=maybe"])
    with pytest.raises(LabelError, match="unknown finding"):
        parse_policy(["Pneumonia=ones"])
    with pytest.raises(LabelError, match="cannot open"):
        read_labelled_csv(tmp_path / "nope.csv")
    plain = tmp_path / "p.csv"
    plain.write_text("path,Atelectasis,Cardiomegaly,Consolidation,Edema,Pleural Effusion\n")
    with pytest.raises(LabelError, match="Frontal/Lateral"):
        read_labelled_csv(plain, frontal_only=True)
