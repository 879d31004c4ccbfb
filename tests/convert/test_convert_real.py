"""One full-size architecture through the real exporter: DenseNet-121, 224x224."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from convert.keras_job import KerasResult
from convert.presets import get_preset
from convert.reference import preprocess, random_images


@pytest.mark.slow
def test_real_densenet121_member_converts_with_parity(
    densenet121_export: tuple[KerasResult, Path],
) -> None:
    """The export runs in tests/convert/conftest.py, early, while other layers are tested."""
    spec = next(m for m in get_preset("default").members if m.name == "densenet121")
    result, out = densenet121_export
    assert result.input_size == (224, 224) and result.channels == 3
    assert result.parity.max_abs_diff <= 1e-5 and result.parity.against == "keras"
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].shape[1:] == [224, 224, 3]
    # The probe (pooled 1024 DenseNet features) rides along for the parity check.
    assert {o.name: o.shape[-1] for o in s.get_outputs()} == {"probabilities": 5, "probe": 1024}
    x = preprocess(random_images(3, 224, 224, seed=0), spec.preprocess)
    probs = s.run(["probabilities"], {"input": x})[0]
    assert probs.shape == (3, 5) and np.all((probs >= 0) & (probs <= 1))
