"""`chexray evaluate` and `chexray calibrate` end to end, on a generated labelled set whose
labels drive the images (tests/support/labelled_set.py), with a tiny repository holding one
member that is informative by construction and one confident distractor, the rest random
(the `informative_repo` fixture of tests/convert/conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from chexray.cli import main
from server.runtime.manifest import FINDINGS, load_manifest
from server.runtime.repository import verify_repository
from tests.support.api import post_image
from tests.support.labelled_set import write_chexpert_set
from tests.support.server_process import running_server

INFORMATIVE, DISTRACTOR = "densenet121", "xception"


@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory):
    """evaluate and calibrate keep the engine's graph cache under CHEXRAY_DATA_DIR, which
    defaults to ./data: here, not in the repository the tests run from."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHEXRAY_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("labelled")
    csv_path, _ = write_chexpert_set(root, n=200, seed=3)
    return root, csv_path


def args(labelled: tuple[Path, Path], repo: Path, out: Path, *extra: str) -> list[str]:
    root, csv_path = labelled
    return [
        "--csv",
        str(csv_path),
        "--images",
        str(root),
        "--model-dir",
        str(repo),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_evaluate_reports_every_network_and_what_it_left_out(
    informative_repo: Path, labelled: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "report"
    assert main(["evaluate", *args(labelled, informative_repo, out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    data = report["data"]
    assert data["rows"] == 203 and data["evaluated"] == 201  # 200 frontal + 1 lateral
    assert data["unreadable"] == {"missing file": 1, "unsupported_format": 1}
    assert data["label_policy"]["Edema"] == "ones" and data["label_policy"]["Cardiomegaly"] == (
        "zeros"
    )
    nets = {n["network"]: n for n in report["auc"]}
    assert list(nets) == [m.name for m in load_manifest(informative_repo).members] + ["ensemble"]
    for finding in FINDINGS:
        good = nets[INFORMATIVE]["findings"][finding]
        assert good["auc"] > 0.9 and good["ci95"][0] < good["auc"] < good["ci95"][1]
        assert nets[DISTRACTOR]["findings"][finding]["auc"] < 0.7
    assert len(report["thresholds"]) == 5 and report["trained"] is False
    assert 0 <= report["categorical_accuracy"] <= 1
    assert "Keras' categorical_accuracy" in report["categorical_accuracy_definition"]
    png = (out / "roc.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    markdown = (out / "evaluation.md").read_text()
    assert "| **ensemble** |" in markdown and "![ROC curves](roc.png)" in markdown
    assert "Untrained model" in capsys.readouterr().out
    assert (out / "scores.npz").is_file()

    frontal = tmp_path / "frontal"
    assert main(["evaluate", *args(labelled, informative_repo, frontal, "--frontal-only")]) == 0
    data = json.loads((frontal / "evaluation.json").read_text())["data"]
    assert data["evaluated"] == 200 and data["left_out"] == {"lateral view": 1}


def test_evaluate_says_what_is_wrong(labelled, informative_repo, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("file,label\nx.png,1\n")
    assert main(["evaluate", "--csv", str(bad), "--model-dir", str(informative_repo)]) == 2
    assert "no 'Path'" in capsys.readouterr().out
    assert main(["evaluate", *args(labelled, tmp_path / "nothing", tmp_path / "r")]) == 2
    assert "chexray convert" in capsys.readouterr().out
    junk = tmp_path / "junk.npz"
    junk.write_text("not numpy")
    calibrate = ["calibrate", *args(labelled, informative_repo, tmp_path / "c"), "--scores"]
    assert main([*calibrate, str(junk)]) == 2
    assert "not a scores.npz" in capsys.readouterr().out


def predict(base: str, image: bytes) -> dict:
    with httpx.Client(base_url=base, timeout=30) as h:
        r = post_image(h, image, heatmap="none")
    assert r.status_code == 200, r.text
    return r.json()


def test_calibrate_fits_weights_and_thresholds_and_the_server_serves_them(
    informative_repo: Path, labelled: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(informative_repo, repo)
    before = load_manifest(repo)
    image = next(labelled[0].rglob("view1_frontal.png")).read_bytes()
    with running_server(repo, tmp_path / "before") as (base, _):
        served_before = predict(base, image)
    assert served_before["model_version"] == before.version

    # evaluate keeps its scores; a dry run reuses them, reports and changes nothing.
    evaluated = tmp_path / "eval"
    assert main(["evaluate", *args(labelled, repo, evaluated, "--no-figure")]) == 0
    saved = str(evaluated / "scores.npz")
    manifest_bytes = (repo / "manifest.json").read_bytes()
    dry = tmp_path / "dry"
    assert main(["calibrate", *args(labelled, repo, dry, "--dry-run", "--scores", saved)]) == 0
    assert (repo / "manifest.json").read_bytes() == manifest_bytes
    assert json.loads((dry / "calibration.json").read_text())["new_version"] is None

    assert main(["calibrate", *args(labelled, repo, tmp_path / "cal")]) == 0
    after = verify_repository(repo)  # every file present and intact
    report = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert after.version == report["new_version"] != before.version
    assert after.calibration is not None and after.calibration.previous_version == before.version
    # The drift report's reference: the calibrated ensemble's scores on the set, sketched.
    quantiles = after.calibration.score_quantiles
    assert quantiles is not None and set(quantiles) == set(FINDINGS)
    for finding in FINDINGS:
        assert len(quantiles[finding]) == 100 and quantiles[finding] == sorted(quantiles[finding])
        assert 0.0 <= quantiles[finding][0] <= quantiles[finding][-1] <= 1.0, finding
    assert (repo / "versions" / f"{before.version}.json").is_file()
    assert (repo / before.fused.file).is_file()  # the previous graph is kept

    names = [m.name for m in after.members]
    good, bad = names.index(INFORMATIVE), names.index(DISTRACTOR)
    old_w, new_w = np.asarray(before.weights_normalised), np.asarray(after.weights_normalised)
    np.testing.assert_allclose(new_w.sum(axis=0), 1.0)
    assert (new_w >= 0).all()
    # A member's sway over the ensemble is its weight times the spread of its outputs: the
    # random members barely vary, so their weights matter little (see evaluation/weights.py).
    with np.load(saved) as z:
        spread = z["member_probabilities"].std(axis=0)  # [M, 5]
    for d, finding in enumerate(FINDINGS):
        sway_old = old_w[:, d] * spread[:, d] / (old_w[:, d] * spread[:, d]).sum()
        sway_new = new_w[:, d] * spread[:, d] / (new_w[:, d] * spread[:, d]).sum()
        assert sway_new[good] > max(0.8, sway_old[good]), finding
        assert new_w[bad, d] <= 0.05 and new_w[bad, d] < old_w[bad, d], finding
    gains = []  # held-out AUC, fitted minus served before
    for f in report["findings"]:
        assert f["weights_from"] == "fitted"
        gains.append(f["fitted"]["mean"] - f["previous"]["mean"])
    assert min(gains) > 0 and np.mean(gains) > 0.05, gains
    # Youden thresholds: sensitivity + specificity beat the old thresholds' on this data.
    for old, new in zip(report["rates_previous"], report["rates_new"], strict=True):
        assert new["threshold"] != old["threshold"]
        assert new["sensitivity"] + new["specificity"] > old["sensitivity"] + old["specificity"]
    assert after.thresholds.values == report["thresholds_new"]
    assert (tmp_path / "cal" / "roc.png").read_bytes().startswith(b"\x89PNG")

    # After a restart the server answers with the new version, weights and thresholds.
    with running_server(repo, tmp_path / "after") as (base, _):
        served_after = predict(base, image)
        info = httpx.get(base + "/api/v1/models", timeout=10).json()
    assert info["version"] == after.version
    assert info["calibration"]["previous_version"] == before.version
    assert info["calibration"]["data"] == "valid.csv" and info["calibration"]["images"] == 201
    assert set(info["calibration"]["held_out_auc"]) == set(FINDINGS)
    assert served_after["model_version"] == after.version
    members = np.array([[m["probabilities"][f] for f in FINDINGS] for m in served_after["members"]])
    by_name = {f["name"]: f for f in served_after["findings"]}
    for d, finding in enumerate(FINDINGS):
        assert by_name[finding]["threshold"] == pytest.approx(after.thresholds.values[d])
        assert by_name[finding]["probability"] == pytest.approx(
            float(members[:, d] @ new_w[:, d]), abs=1e-5
        )
    old_probs = [f["probability"] for f in served_before["findings"]]
    assert not np.allclose(old_probs, [by_name[f]["probability"] for f in FINDINGS])

    # The previous version can be served again.
    capsys.readouterr()
    assert main(["models", "versions", "--dir", str(repo)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[0] == before.version and "chexray convert" in listed[0]
    assert listed[1].startswith(f"* {after.version}") and "calibrated on" in listed[1]
    assert main(["models", "use", before.version, "--dir", str(repo)]) == 0
    assert verify_repository(repo).version == before.version
    assert main(["models", "use", "tiny-nonexistent", "--dir", str(repo)]) == 2
