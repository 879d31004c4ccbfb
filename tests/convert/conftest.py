"""The converter's layer: a tiny repository built by the real converter (TensorFlow and
torch in child processes), and Keras weight files written by tests/support/make_keras_files.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


@pytest.fixture(scope="session")
def converted_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`chexray convert --preset tiny`, once per session."""
    from convert.pipeline import convert_repository

    out = tmp_path_factory.mktemp("converted_repo")
    convert_repository("tiny", out, log=lambda _: None)
    return out


@pytest.fixture
def converted_copy(converted_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the converted repository that a test may rebuild or damage."""
    out = tmp_path / "repo"
    shutil.copytree(converted_repo, out)
    return out


def make_keras_files(mode: str, out: Path) -> Path:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "make_keras_files.py"), mode, str(out)],
        check=True,
        env=env,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def keras3_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keras_files("keras3", tmp_path_factory.mktemp("keras3"))


@pytest.fixture(scope="session")
def legacy_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keras_files("legacy", tmp_path_factory.mktemp("legacy"))


@pytest.fixture(scope="session")
def informative_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An informative and a distractor member for tests/support/labelled_set.py's images."""
    return make_keras_files("informative", tmp_path_factory.mktemp("informative"))
