"""The converter's layer: a tiny repository built by the real converter (TensorFlow and
torch in child processes), Keras weight files written by tests/support/make_keras_files.py,
a repository holding the informative members that tests/support/labelled_set.py's images
call for, and one full-size DenseNet-121 member through the real exporter.

These builds take most of the layer's time and mostly wait on child processes, so once
collection shows which of them the session's tests need, they start in one background
thread, in order, and run while the faster layers (tested first) use the other core. A
fixture waits for its build, or runs it itself when nothing started it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, no_frameworks

LAYER = Path(__file__).resolve().parent


def make_keras_files(mode: str, out: Path) -> Path:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "make_keras_files.py"), mode, str(out)],
        check=True,
        env=env,
        capture_output=True,
    )
    return out


def _convert(out: Path, weights_dir: Path | None = None) -> Path:
    from convert.pipeline import convert_repository

    convert_repository("tiny", out, weights_dir=weights_dir, log=lambda _: None)
    return out


def _export_densenet121(folder: Path) -> tuple[Any, Path]:
    """The default preset's DenseNet-121 (224x224, random init) through the Keras job."""
    from convert.jobs import run_job
    from convert.keras_job import KerasItem, KerasJob, KerasResult
    from convert.presets import get_preset

    spec = next(m for m in get_preset("default").members if m.name == "densenet121")
    folder.mkdir(parents=True)
    out = folder / "densenet121.onnx"
    job = KerasJob("keras3", [KerasItem(spec, None, str(out), parity_samples=2)])
    (result,) = run_job("convert.keras_job", job, list[KerasResult])
    return result, out


class Builds:
    """Session-wide builds, each at most once, in a background thread when started early."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future[Any]] = {}
        # name -> (what it needs first, how to build it into a fresh folder)
        self._recipes: dict[str, tuple[tuple[str, ...], Callable[[Path], Any]]] = {
            "converted_repo": ((), _convert),
            "keras3_files": ((), lambda out: make_keras_files("keras3", out)),
            "legacy_files": ((), lambda out: make_keras_files("legacy", out)),
            "informative_files": ((), lambda out: make_keras_files("informative", out)),
            "informative_repo": (
                ("informative_files",),
                lambda out: _convert(out, weights_dir=self.get("informative_files")),
            ),
            "densenet121_export": ((), _export_densenet121),
        }

    def _folder(self, name: str) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="chexray-convert-layer-"))
        return self._root / name

    def start(self, names: list[str]) -> None:
        """Queue the named builds on one background thread, in the order given, each after
        what it needs; names that are no build are ignored."""
        ordered: list[str] = []

        def add(name: str) -> None:
            for need in self._recipes[name][0]:
                add(need)
            if name not in ordered:
                ordered.append(name)

        for name in names:
            if name in self._recipes:
                add(name)
        todo = [n for n in ordered if n not in self._futures]
        if not todo:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="convert-layer")
        for name in todo:
            self._futures[name] = self._executor.submit(self._build, name)

    def _build(self, name: str) -> Any:
        return self._recipes[name][1](self._folder(name))

    def get(self, name: str) -> Any:
        if name not in self._futures:  # not started early: build it here and now
            future: Future[Any] = Future()
            self._futures[name] = future
            try:
                future.set_result(self._build(name))
            except BaseException as exc:
                future.set_exception(exc)
        return self._futures[name].result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


BUILDS = Builds()


def pytest_collection_finish(session: pytest.Session) -> None:
    if no_frameworks.requested() or session.config.option.collectonly:
        return  # the layer is skipped, or nothing runs: nothing to build ahead
    needed: list[str] = []  # in the order the tests will ask for them
    for item in session.items:
        if LAYER in item.path.parents:
            needed.extend(getattr(item, "fixturenames", ()))
    BUILDS.start(needed)


def pytest_sessionfinish(session: pytest.Session) -> None:
    BUILDS.close()


@pytest.fixture(scope="session")
def converted_repo() -> Path:
    """`chexray convert --preset tiny`, once per session."""
    return BUILDS.get("converted_repo")


@pytest.fixture
def converted_copy(converted_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the converted repository that a test may rebuild or damage."""
    out = tmp_path / "repo"
    shutil.copytree(converted_repo, out)
    return out


@pytest.fixture(scope="session")
def keras3_files() -> Path:
    return BUILDS.get("keras3_files")


@pytest.fixture(scope="session")
def legacy_files() -> Path:
    return BUILDS.get("legacy_files")


@pytest.fixture(scope="session")
def informative_files() -> Path:
    """An informative and a distractor member for tests/support/labelled_set.py's images."""
    return BUILDS.get("informative_files")


@pytest.fixture(scope="session")
def informative_repo() -> Path:
    """The tiny preset converted with the informative and the distractor member (the other
    networks random), for `chexray evaluate` and `chexray calibrate`."""
    return BUILDS.get("informative_repo")


@pytest.fixture(scope="session")
def densenet121_export() -> tuple[Any, Path]:
    """(KerasResult, ONNX file) of the full-size DenseNet-121 member: tens of seconds."""
    return BUILDS.get("densenet121_export")
