"""The framework block behind `make test-fast` (tests/support/no_frameworks.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tests.support import ROOT, no_frameworks


@pytest.mark.parametrize(
    "name", ["tensorflow", "tensorflow.python", "torch", "torch.nn", "keras", "tf_keras", "tf2onnx"]
)
def test_the_finder_refuses_the_frameworks(name: str) -> None:
    with pytest.raises(ImportError, match=no_frameworks.VARIABLE):
        no_frameworks.BlockFrameworks().find_spec(name)


@pytest.mark.parametrize("name", ["onnx", "onnxruntime", "numpy", "torchvision", "kerastuner"])
def test_the_finder_leaves_everything_else_to_the_others(name: str) -> None:
    assert no_frameworks.BlockFrameworks().find_spec(name) is None


@pytest.mark.skipif(not no_frameworks.requested(), reason=f"{no_frameworks.VARIABLE} is not set")
def test_the_block_holds_here_and_in_child_processes() -> None:
    with pytest.raises(ImportError, match=no_frameworks.VARIABLE):
        importlib.import_module("torch")
    child = subprocess.run(
        [sys.executable, "-c", "import onnxruntime, server.runtime.engine; import tensorflow"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert child.returncode == 1
    assert "import of 'tensorflow' refused" in child.stderr, child.stderr
