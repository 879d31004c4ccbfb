"""The fused graph of the tiny repository (built with onnx alone, tests/support/tiny_repo.py):
its interface, in-graph re-ordering and resizing, the fp16 variant, `chexray models check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from convert.reference import preprocess, random_images
from server.runtime.manifest import FINDINGS, load_manifest, normalise_weights
from server.runtime.repository import verify_repository


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_tiny_repo_is_intact_and_says_what_its_parity_was_checked_against(
    tiny_repo: Path,
) -> None:
    m = verify_repository(tiny_repo)
    assert m.preset == "tiny" and not m.trained
    for net in (*m.members, m.cam):
        assert net.parity.against == "numpy reference" and net.parity.max_abs_diff <= 1e-5
    assert m.fused.parity.against == "separate networks" and m.fused.parity.max_abs_diff <= 1e-5
    assert m.fused_fp16 is not None and m.fused_fp16.parity.against == "fused fp32"
    assert m.fused_fp16.parity.max_abs_diff <= 1e-2
    assert m.weights_normalised == normalise_weights(m.weights)


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
