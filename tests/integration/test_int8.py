"""int8, opt-in, on the tiny repository: quantised on a handful of generated X-rays, recorded
in the manifest with its precision check (parity, or AUC on a labelled set), served only
when asked for and only when its check passed, never chosen by auto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest

from convert.errors import ConversionError
from convert.pipeline import add_int8
from convert.quantize import Int8Request
from server.runtime.backends import Choice, Machine, choose
from server.runtime.checkset import check_set
from server.runtime.manifest import load_manifest
from server.runtime.precision import PrecisionRefused, int8_choice, refusal
from server.runtime.repository import verify_repository
from server.settings import Settings
from tests.integration.test_backends import CPU_BF16, CPU_ONLY, GPU, NO_OPENVINO, predict
from tests.support.api import xray
from tests.support.images import jpeg, png
from tests.support.labelled_set import write_chexpert_set
from tests.support.server_process import ROOT

HERE = Machine.here()
LABEL = int8_choice(HERE).label


def write_calibration(folder: Path, n: int = 6, seed: int = 5) -> Path:
    """Generated X-rays as PNG and JPEG, in a subfolder too, beside a file that is not one."""
    (folder / "more").mkdir(parents=True)
    for i, image in enumerate(check_set(200, 180, n, seed=seed)):
        if i % 2:
            (folder / "more" / f"x{i}.jpg").write_bytes(jpeg(image))
        else:
            (folder / f"x{i}.png").write_bytes(png(image))
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    return write_calibration(tmp_path / "calibration")


@pytest.fixture
def int8_repo(tiny_copy: Path, calibration: Path) -> Path:
    add_int8(tiny_copy, Int8Request(calibration, images=8), log=lambda _: None)
    return tiny_copy


def test_the_int8_graph_is_built_recorded_and_checked(tiny_copy: Path, calibration: Path):
    before = verify_repository(tiny_copy)
    lines: list[str] = []
    manifest = add_int8(tiny_copy, Int8Request(calibration, images=8), log=lines.append)
    assert verify_repository(tiny_copy) == manifest
    assert manifest.version == before.version and manifest.fused == before.fused
    graph = manifest.fused_int8
    assert graph is not None and graph.dtype == "int8" and graph.file == "ensemble.int8.onnx"
    # Six readable images of the eight asked for; the text file is skipped.
    assert graph.parity.samples == 6 and graph.parity.max_abs_diff < graph.parity.tolerance
    check = manifest.precision_checks[LABEL]
    assert check.images == 16 and check.auc_drop is None and len(check.max_abs_diff) == 5
    # The tiny networks' sharp heads amplify int8's rounding on the generated check set:
    # the parity gate (1e-2) fails, deterministically.
    assert not check.passed and max(check.max_abs_diff) > check.tolerance
    assert any(f"Precision {LABEL}: FAILED" in line for line in lines)
    if HERE.openvino:
        assert {"openvino-cpu-fp32", LABEL} <= set(manifest.precision_checks)


def test_an_unchanged_int8_graph_is_reused_and_a_rebuilt_one_rechecked(
    int8_repo: Path, tmp_path: Path
):
    first = load_manifest(int8_repo)
    lines: list[str] = []
    calibration = int8_repo.parent / "calibration"
    same = add_int8(int8_repo, Int8Request(calibration, images=8), log=lines.append)
    assert same == first and any("int8 graph" in x and "up to date" in x for x in lines)

    # A stale record must not survive a rebuild: mark it, rebuild on other images.
    marked = msgspec.structs.replace(first.precision_checks[LABEL], created="stale")
    checks = {**first.precision_checks, LABEL: marked}
    (int8_repo / "manifest.json").write_bytes(
        msgspec.json.encode(msgspec.structs.replace(first, precision_checks=checks))
    )
    other = write_calibration(tmp_path / "other", n=4, seed=9)
    rebuilt = add_int8(int8_repo, Int8Request(other), log=lambda _: None)
    assert rebuilt.fused_int8 is not None and first.fused_int8 is not None
    assert rebuilt.fused_int8.build_key != first.fused_int8.build_key
    assert rebuilt.fused_int8.parity.samples == 4
    assert rebuilt.precision_checks[LABEL].created != "stale"
    verify_repository(int8_repo)


def test_int8_is_served_only_when_asked_and_refused_after_a_failed_check(
    int8_repo: Path, tmp_path: Path
):
    manifest = load_manifest(int8_repo)
    for machine in (GPU, CPU_BF16, CPU_ONLY, NO_OPENVINO):
        assert choose(Settings(), manifest, machine).precision != "int8"
    assert choose(Settings(precision="int8"), manifest, CPU_BF16) == Choice(
        "openvino", "cpu", "int8"
    )
    assert choose(Settings(precision="int8"), manifest, GPU) == Choice("openvino", "cpu", "int8")
    assert choose(Settings(precision="int8"), manifest, NO_OPENVINO) == Choice(
        "onnxruntime", "cpu", "int8"
    )
    assert choose(Settings(backend="onnxruntime", precision="int8"), manifest, GPU) == Choice(
        "onnxruntime", "cpu", "int8"
    )
    # The tiny model's int8 check failed (see above): the engine refuses to serve it.
    with pytest.raises(PrecisionRefused, match=f"{LABEL} failed its precision check"):
        predict(int8_repo, tmp_path, [xray()], precision="int8")


def test_int8_answers_once_its_check_passed(int8_repo: Path, tmp_path: Path):
    """With a passing record (as a labelled set may give), the int8 graph serves."""
    manifest = load_manifest(int8_repo)
    passed = msgspec.structs.replace(manifest.precision_checks[LABEL], passed=True)
    (int8_repo / "manifest.json").write_bytes(
        msgspec.json.encode(
            msgspec.structs.replace(
                manifest, precision_checks={**manifest.precision_checks, LABEL: passed}
            )
        )
    )
    uploads = [xray(seed) for seed in range(2)]
    _, expected = predict(int8_repo, tmp_path, uploads, backend="onnxruntime")
    engine, got = predict(int8_repo, tmp_path, uploads, precision="int8")
    assert engine.choice == int8_choice(HERE)
    for e, g in zip(expected, got, strict=True):
        assert g.precision == "int8" and g.backend == LABEL
        np.testing.assert_allclose(g.probabilities, e.probabilities, atol=0.3)


def test_a_labelled_set_gates_int8_by_auc(tiny_copy: Path, calibration: Path, tmp_path: Path):
    csv_path, _ = write_chexpert_set(tmp_path / "labelled", n=40, size=128)
    lines: list[str] = []
    manifest = add_int8(
        tiny_copy,
        Int8Request(calibration, images=8, labelled_csv=csv_path),
        log=lines.append,
    )
    check = manifest.precision_checks[LABEL]
    assert check.auc_set == str(csv_path) and check.auc_limit == 0.005
    assert check.auc_drop is not None and len(check.auc_drop) == 5
    # 41 readable of the 43 rows (one missing file, one text file).
    assert check.images == 41 and "41 labelled images" in check.check_set
    drops = [d for d in check.auc_drop if d is not None]
    assert drops and check.passed == all(d <= 0.005 for d in drops)
    assert check.passed is False  # the tiny random networks' ranking moves under int8
    assert "AUC drop" in refusal(check)
    assert any("AUC drop vs fp32" in line for line in lines)
    # Asked again with the same set: the record stands.
    lines.clear()
    again = add_int8(
        tiny_copy, Int8Request(calibration, images=8, labelled_csv=csv_path), log=lines.append
    )
    assert again.precision_checks[LABEL] == check
    assert any(f"Precision {LABEL} on {csv_path}: up to date" in line for line in lines)


def test_a_calibration_folder_without_images_is_a_clear_error(tiny_copy: Path, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no X-rays here\n")
    with pytest.raises(ConversionError, match="no readable PNG, JPEG or DICOM file"):
        add_int8(tiny_copy, Int8Request(empty), log=lambda _: None)
    with pytest.raises(ConversionError, match="no such folder"):
        add_int8(tiny_copy, Int8Request(tmp_path / "absent"), log=lambda _: None)
    assert load_manifest(tiny_copy).fused_int8 is None
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chexray.cli",
            "convert",
            "--int8-only",
            "--int8-calibration",
            str(empty),
            "--out",
            str(tiny_copy),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no readable PNG, JPEG or DICOM file" in result.stdout


def test_int8_options_need_a_calibration_folder() -> None:
    from chexray.cli import build_parser
    from convert.cli import run

    args = build_parser().parse_args(["convert", "--int8-only"])
    assert run(args) == 2


def test_calibration_images_are_decoded_like_the_server_does(tmp_path: Path) -> None:
    from convert.quantize import calibration_images
    from server.runtime.decode import decode
    from server.runtime.preprocess import resize_for_model

    folder = write_calibration(tmp_path / "c", n=3)
    images = calibration_images(folder, (64, 48), limit=2)
    assert images.shape == (2, 64, 48) and images.dtype == np.uint8
    first = sorted(p for p in folder.rglob("*") if p.is_file())[0]
    expected = resize_for_model(decode(first.read_bytes(), 1 << 26, 1 << 26).pixels, (64, 48))
    np.testing.assert_array_equal(images[0], expected)
    assert cv2.imread(str(first)) is not None
