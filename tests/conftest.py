"""Shared fixtures: the tiny model repository, built once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convert.pipeline import convert_repository

    out = tmp_path_factory.mktemp("tiny_repo")
    convert_repository("tiny", out, log=lambda _: None)
    return out


@pytest.fixture
def tiny_copy(tiny_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny repository that a test may change."""
    out = tmp_path / "repo"
    shutil.copytree(tiny_repo, out)
    return out


def make_keras_files(mode: str, out: Path) -> Path:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "make_keras_files.py"), mode, str(out)],
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
