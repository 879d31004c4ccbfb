"""The tiny repository end to end: parity, fused outputs, re-ordering, idempotent rebuilds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from convert.pipeline import convert_repository
from convert.reference import preprocess, random_images
from server.runtime.manifest import FINDINGS, load_manifest, normalise_weights


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_export_is_checked_and_recorded(tiny_repo: Path) -> None:
    m = load_manifest(tiny_repo)
    assert m.preset == "tiny" and not m.trained
    for member in m.members:
        assert member.parity.against == "keras"
        assert member.parity.max_abs_diff <= 1e-5 and member.parity.samples > 0
        assert not member.trained and member.source is None and member.loader == "random"
    assert m.cam.parity.against == "torch" and m.cam.parity.max_abs_diff <= 1e-5
    assert m.fused.parity.max_abs_diff <= 1e-5
    assert m.fused_fp16 is not None and m.fused_fp16.parity.max_abs_diff <= 1e-2
    assert m.weights_normalised == normalise_weights(m.weights)
    assert m.cam.class_map == {
        "Atelectasis": 0,
        "Cardiomegaly": 1,
        "Consolidation": 8,
        "Edema": 9,
        "Pleural Effusion": 2,
    }


def test_fused_graph_interface(tiny_repo: Path) -> None:
    m = load_manifest(tiny_repo)
    s = session(tiny_repo / m.fused.file)
    (inp,) = s.get_inputs()
    assert (inp.name, inp.type) == ("image", "tensor(uint8)")
    h, w = m.input.shape[1:]
    for n in (1, 3):
        probs, members, cam_p, cams = s.run(None, {"image": random_images(n, h, w, seed=n)})
        assert probs.shape == (n, 5) and members.shape == (n, 5, 5)
        assert cam_p.shape == (n, 5) and cams.shape == (n, 5, *m.cam.feature_map[1:])
        assert np.all((probs >= 0) & (probs <= 1))
        # A true weighted average: within the members' range, weights from the manifest.
        expected = (members * np.asarray(m.weights_normalised, np.float32)[None]).sum(1)
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        assert np.all(probs <= members.max(1) + 1e-6) and np.all(probs >= members.min(1) - 1e-6)


def test_members_are_reordered_and_resized_in_graph(tiny_repo: Path) -> None:
    """DenseNet-169 emits the CheXpert order; Inception-ResNet-v2 was trained at 96x96."""
    m = load_manifest(tiny_repo)
    h, w = m.input.shape[1:]
    images = random_images(2, h, w, seed=3)
    fused = session(tiny_repo / m.fused.file).run(["member_probabilities"], {"image": images})[0]
    i = [x.name for x in m.members].index("densenet169")
    dn169 = m.members[i]
    assert dn169.output_order != list(FINDINGS)
    raw = session(tiny_repo / dn169.file).run(
        None, {"input": preprocess(images, dn169.preprocess)}
    )[0]
    reordered = raw[:, [dn169.output_order.index(f) for f in FINDINGS]]
    np.testing.assert_allclose(fused[:, i], reordered, atol=1e-6)
    assert not np.allclose(raw, reordered)

    j = [x.name for x in m.members].index("inception_resnet_v2")
    small = m.members[j]
    assert tuple(small.input_size) == (96, 96) != (h, w)
    import cv2

    resized = np.stack([cv2.resize(im, (96, 96), interpolation=cv2.INTER_LINEAR) for im in images])
    alone = session(tiny_repo / small.file).run(
        None, {"input": preprocess(resized, small.preprocess)}
    )[0]
    # cv2 rounds its resize to uint8, the graph does not: close, not identical.
    np.testing.assert_allclose(fused[:, j], alone, atol=2e-2)


def test_fp16_graph_keeps_uint8_input_and_fp32_outputs(tiny_repo: Path) -> None:
    m = load_manifest(tiny_repo)
    s = session(tiny_repo / m.fused_fp16.file)
    assert s.get_inputs()[0].type == "tensor(uint8)"
    assert all(o.type == "tensor(float)" for o in s.get_outputs())
    h, w = m.input.shape[1:]
    images = random_images(2, h, w, seed=9)
    a = session(tiny_repo / m.fused.file).run(["probabilities"], {"image": images})[0]
    b = s.run(["probabilities"], {"image": images})[0]
    np.testing.assert_allclose(a, b, atol=1e-2)


def test_rebuild_is_idempotent_and_only_redoes_what_changed(
    tiny_copy: Path, tmp_path: Path
) -> None:
    before = load_manifest(tiny_copy)
    mtimes = {p: p.stat().st_mtime_ns for p in tiny_copy.rglob("*.onnx")}
    lines: list[str] = []
    again = convert_repository("tiny", tiny_copy, log=lines.append)
    assert again == before
    assert {p: p.stat().st_mtime_ns for p in tiny_copy.rglob("*.onnx")} == mtimes
    assert sum(line.startswith("[") and "up to date" in line for line in lines) == 8

    # New ensemble weights: the networks are reused, the fused graph and version change.
    matrix = tmp_path / "weights.json"
    matrix.write_text(
        '{"xception": [1,1,1,1,1], "inception_resnet_v2": [1,1,1,1,1], "densenet121": [1,1,1,1,1],'
        ' "densenet169": [1,1,1,1,1], "densenet201": [1,1,1,1,1]}'
    )
    lines.clear()
    equal = convert_repository("tiny", tiny_copy, weights_matrix=matrix, log=lines.append)
    assert equal.version != before.version
    assert equal.members == before.members and equal.cam == before.cam
    assert equal.weights_normalised == [[0.2] * 5] * 5
    assert any(line.startswith("[7/8] fused graph: merging") for line in lines)


def test_a_corrupted_part_is_rebuilt(tiny_copy: Path) -> None:
    m = load_manifest(tiny_copy)
    part = tiny_copy / m.members[0].file
    part.write_bytes(b"\0" * 100)
    lines: list[str] = []
    again = convert_repository("tiny", tiny_copy, log=lines.append)
    assert any(line.startswith("[1/8] xception") and "converting" in line for line in lines)
    assert again.members[0].sha256 == m.members[0].sha256, "random init is reproducible"
    assert os.path.getsize(part) > 100


@pytest.mark.parametrize("bad", ["missing", "corrupt"])
def test_models_check_names_the_damaged_file(tiny_copy: Path, bad: str, capsys) -> None:
    from chexray.cli import main

    m = load_manifest(tiny_copy)
    target = tiny_copy / m.fused.file
    if bad == "missing":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    assert main(["models", "check", str(tiny_copy)]) == 2
    out = capsys.readouterr().out
    assert str(target) in out and ("missing" if bad == "missing" else "corrupted") in out
    assert "Traceback" not in out


def test_models_check_prints_summary(tiny_repo: Path, capsys) -> None:
    from chexray.cli import main

    assert main(["models", "check", str(tiny_repo)]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "OK: all files present and intact." in out
    for member in ("xception", "inception_resnet_v2", "densenet121", "densenet169", "densenet201"):
        assert member in out
