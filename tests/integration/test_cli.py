"""The `chexray` command line: usage errors are messages, not tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def chexray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chexray.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_unknown_member_size(tmp_path: Path) -> None:
    r = chexray("convert", "--preset", "tiny", "--out", str(tmp_path), "--member-size", "vgg=64x64")
    assert r.returncode == 2 and "--member-size names unknown members ['vgg']" in r.stdout


def test_malformed_member_size(tmp_path: Path) -> None:
    r = chexray("convert", "--preset", "tiny", "--out", str(tmp_path), "--member-size", "xception")
    assert r.returncode != 0 and "expected NAME=HxW" in r.stdout + r.stderr


def test_bad_weights_matrix(tmp_path: Path) -> None:
    matrix = tmp_path / "w.json"
    matrix.write_text('{"xception": [1, 1, 1, 1, 1]}')
    r = chexray(
        "convert", "--preset", "tiny", "--out", str(tmp_path), "--weights-matrix", str(matrix)
    )
    assert r.returncode == 2 and "has no row for ['inception_resnet_v2'" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_models_check_on_an_empty_folder(tmp_path: Path) -> None:
    r = chexray("models", "check", str(tmp_path))
    assert r.returncode == 2 and "no manifest" in r.stdout and "chexray convert" in r.stdout


def test_bad_member_order(tmp_path: Path) -> None:
    r = chexray(
        "convert",
        "--preset",
        "tiny",
        "--out",
        str(tmp_path),
        "--member-order",
        "densenet169=Edema,Cardiomegaly",
    )
    assert r.returncode == 2 and "is not an order of the five findings" in r.stdout
