"""OpenVINO running the fused graph's networks in parts side by side (server/runtime/
branches.py) on the tiny repository: the same answers as the graph run whole, every network
in exactly one part, parts as the settings ask, and a graph of another shape run whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from convert.fuse import cpu_session
from server.runtime import contract
from server.runtime.backends import Choice, Machine, open_backend
from server.runtime.manifest import load_manifest
from server.settings import Settings

pytestmark = pytest.mark.skipif(not Machine.here().openvino, reason="openvino is not installed")

FP32 = Choice("openvino", "cpu", "fp32")


def backend(repo: Path, data: Path, **settings):
    s = Settings(model_dir=repo, data_dir=data, **settings)
    return open_backend(FP32, load_manifest(repo), repo, s)


def batch(repo: Path, n: int) -> np.ndarray:
    h, w = (int(d) for d in load_manifest(repo).input.shape[1:])
    return np.random.default_rng(n).integers(0, 256, (n, h, w), dtype=np.uint8)


def test_parts_answer_as_the_whole_graph(tiny_repo: Path, tmp_path: Path) -> None:
    whole = backend(tiny_repo, tmp_path, openvino_parts=1)
    parts = backend(tiny_repo, tmp_path, openvino_parts=2, intra_op_threads=2)
    assert whole.plan is None
    assert parts.plan is not None and len(parts.plan.parts) == 2
    for n in (1, 3):
        images = batch(tiny_repo, n)
        expected, got = whole.run(images), parts.run(images)
        assert set(got) == set(contract.OUTPUTS)
        for name in contract.OUTPUTS:
            assert got[name].dtype == np.float32 and got[name].shape == expected[name].shape
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_every_network_runs_in_exactly_one_part(tiny_repo: Path, tmp_path: Path) -> None:
    manifest = load_manifest(tiny_repo)
    for parts in (2, 3):
        b = backend(tiny_repo, tmp_path, openvino_parts=parts, intra_op_threads=parts)
        plan = b.plan
        assert plan is not None and len(plan.parts) == parts
        computed = [t for part in plan.parts for t in part]
        assert sorted(computed) == sorted([*plan.rows, *plan.passed.values()])
        assert len(plan.rows) == len(manifest.members)
        # The CAM network's two outputs share its convolutions: one network, one part.
        (cam_part,) = [p for p in plan.parts if plan.passed[contract.CAM_MAPS] in p]
        assert plan.passed[contract.CAM_PROBABILITIES] in cam_part
        assert all(c > 0 for c in plan.costs)


def test_parts_are_bounded_by_the_threads(tiny_repo: Path, tmp_path: Path) -> None:
    assert backend(tiny_repo, tmp_path, openvino_parts=4, intra_op_threads=1).plan is None
    b = backend(tiny_repo, tmp_path, openvino_parts=4, intra_op_threads=2)
    assert b.plan is not None and len(b.plan.parts) == 2


def _weights_added_not_multiplied(src: Path, dest: Path) -> None:
    model = onnx.load(str(src))
    (node,) = [n for n in model.graph.node if contract.WEIGHTS_INITIALIZER in n.input]
    node.op_type = "Add"
    onnx.save(model, str(dest))


def test_a_graph_of_another_shape_runs_whole(tiny_repo: Path, tmp_path: Path) -> None:
    import openvino as ov

    from server.runtime.branches import NotSplit, plan
    from server.runtime.openvino_backend import OpenVinoBackend

    manifest = load_manifest(tiny_repo)
    odd = tmp_path / "odd.onnx"
    _weights_added_not_multiplied(tiny_repo / manifest.fused.file, odd)
    with pytest.raises(NotSplit, match="not a weighted sum"):
        plan(ov.Core().read_model(str(odd)), 2)
    s = Settings(model_dir=tiny_repo, data_dir=tmp_path, openvino_parts=2, intra_op_threads=2)
    b = OpenVinoBackend(FP32, odd, manifest.fused, list(contract.OUTPUTS), s)
    assert b.plan is None
    images = batch(tiny_repo, 2)
    got = b.run(images)
    names = list(contract.OUTPUTS)
    expected = dict(zip(names, cpu_session(odd).run(names, {contract.INPUT: images}), strict=True))
    for name in contract.OUTPUTS:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_the_setting_is_checked() -> None:
    from server.settings import SettingsError

    with pytest.raises(SettingsError, match="CHEXRAY_OPENVINO_PARTS must be >= 0"):
        Settings(openvino_parts=-1)
