"""Trained weights in every shape the seed left behind, and every bad input a user can give."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from convert.errors import ConversionError
from convert.pipeline import convert_repository
from convert.reference import preprocess, random_images
from server.runtime.manifest import load_manifest
from tests.support import ROOT


def member_output(repo: Path, name: str) -> np.ndarray:
    m = load_manifest(repo)
    member = next(x for x in m.members if x.name == name)
    s = ort.InferenceSession(str(repo / member.file), providers=["CPUExecutionProvider"])
    x = preprocess(random_images(3, *member.input_size, seed=7), member.preprocess)
    return s.run(["probabilities"], {"input": x})[0]


def test_keras3_full_model_with_its_own_head(converted_copy: Path, keras3_files: Path) -> None:
    weights = converted_copy.parent / "weights"
    weights.mkdir()
    shutil.copy(keras3_files / "xception.keras", weights)
    lines: list[str] = []
    m = convert_repository("tiny", converted_copy, weights_dir=weights, log=lines.append)
    x = m.members[0]
    assert (x.trained, x.loader, x.source) == (True, "keras3", str(weights / "xception.keras"))
    assert x.parity.max_abs_diff <= 1e-5
    assert not m.trained, "the other networks are still random"
    np.testing.assert_allclose(
        member_output(converted_copy, "xception"),
        np.load(keras3_files / "xception.expected.npy"),
        atol=1e-5,
    )
    # Only the member that changed was converted again.
    assert sum(line.endswith(": converting") for line in lines) == 1


def test_legacy_keras2_files_through_tf_keras(converted_copy: Path, legacy_files: Path) -> None:
    """Full .h5, JSON + weights .h5, weights-only .h5, all written by tf_keras."""
    m = convert_repository("tiny", converted_copy, weights_dir=legacy_files, log=lambda _: None)
    by_name = {x.name: x for x in m.members}
    for name, source in (
        ("densenet121", "densenet121.h5"),
        ("densenet169", "DenseNet169.json"),
        ("densenet201", "densenet-201.h5"),
    ):
        member = by_name[name]
        assert member.trained and member.loader == "tf_keras"
        assert Path(member.source).name == source
        np.testing.assert_allclose(
            member_output(converted_copy, name),
            np.load(legacy_files / f"{name}.expected.npy"),
            atol=1e-5,
        )
    assert not by_name["xception"].trained


def convert_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chexray.cli", "convert", "--preset", "tiny", "--no-fp16", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("outputs", "output shape (None, 3); expected (batch, 5)"),
        ("inputs", "the model has 2 inputs; a member takes one image"),
        ("logits", "not probabilities: a member must end in a sigmoid"),
    ],
)
def test_wrong_keras_models_are_refused(
    converted_copy: Path, keras3_files: Path, case: str, message: str
) -> None:
    folder = keras3_files / "bad" / case
    r = convert_cli("--weights", str(folder), "--out", str(converted_copy))
    assert r.returncode == 2
    assert message in r.stdout and str(folder / "xception.keras") in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_unreadable_weight_files_are_named(tmp_path: Path) -> None:
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "densenet121.h5").write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(ConversionError, match=r"densenet121\.h5: not a readable HDF5 file"):
        convert_repository("tiny", tmp_path / "out", weights_dir=weights, log=lambda _: None)
    (weights / "densenet121.h5").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"densenet121\.h5: empty file"):
        convert_repository("tiny", tmp_path / "out", weights_dir=weights, log=lambda _: None)
    with pytest.raises(ConversionError, match="weights folder does not exist"):
        convert_repository(
            "tiny", tmp_path / "out", weights_dir=tmp_path / "nope", log=lambda _: None
        )


def test_json_without_weights_says_what_it_expects(tmp_path: Path) -> None:
    (tmp_path / "xception.json").write_text("{}")
    with pytest.raises(ConversionError, match=r"xception\.json: JSON architecture without weights"):
        convert_repository("tiny", tmp_path / "out", weights_dir=tmp_path, log=lambda _: None)


def test_keras_file_that_keras_cannot_load(converted_copy: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "xception.keras").write_bytes(b"PK\x03\x04 not really a zip")
    r = convert_cli("--weights", str(weights), "--out", str(converted_copy))
    assert r.returncode == 2
    assert f"{weights / 'xception.keras'}: cannot be loaded by keras3" in r.stdout
    assert "Traceback" not in r.stdout


def _tiny_densenet():
    import torch

    from convert.densenet import DenseNet
    from convert.presets import get_preset

    cs = get_preset("tiny").cam
    torch.manual_seed(5)
    net = DenseNet(cs.growth_rate, cs.block_config, cs.num_init_features, cs.bn_size, 14)
    with torch.no_grad():  # non-trivial running statistics, as a trained network has
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_chexnet_checkpoint_in_the_old_wrapped_layout(converted_copy: Path, tmp_path: Path) -> None:
    """`module.densenet121.features.denseblock1.denselayer1.norm.1.weight` and a
    Sequential(Linear, Sigmoid) classifier, as the public CheXNet checkpoints have."""
    import re

    import torch

    from convert.densenet import CamHead

    net = _tiny_densenet()
    old = {}
    for k, v in net.state_dict().items():
        k = re.sub(r"\.(norm|relu|conv)([12])\.", r".\1.\2.", k)
        k = k.replace("classifier.", "classifier.0.")
        old["module.densenet121." + k] = v
    ckpt = tmp_path / "chexnet.pth.tar"
    torch.save({"epoch": 3, "state_dict": old}, ckpt)

    m = convert_repository("tiny", converted_copy, cam_checkpoint=ckpt, log=lambda _: None)
    assert m.cam.trained and m.cam.source == str(ckpt) and m.cam.parity.max_abs_diff <= 1e-5
    x = preprocess(random_images(2, *m.cam.input_size, seed=11), m.cam.preprocess)
    head = CamHead(net, [m.cam.class_map[f] for f in m.findings]).eval()
    with torch.no_grad():
        probs, cams = head(torch.from_numpy(x))
    s = ort.InferenceSession(str(converted_copy / m.cam.file), providers=["CPUExecutionProvider"])
    got_p, got_c = s.run(["cam_probabilities", "cam_maps"], {"input": x})
    np.testing.assert_allclose(got_p, probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_c, cams.numpy(), atol=1e-4)
    # Each finding has its own map (classifier rows differ), unlike the seed's BatchNorm weights.
    assert not np.allclose(got_c[:, 0], got_c[:, 1])


def test_checkpoint_with_wrong_keys_is_refused(converted_copy: Path, tmp_path: Path) -> None:
    import torch

    state = _tiny_densenet().state_dict()
    del state["features.norm5.weight"]
    state["features.extra.weight"] = torch.zeros(3)
    ckpt = tmp_path / "bad.pth"
    torch.save(state, ckpt)
    with pytest.raises(
        ConversionError,
        match=r"bad\.pth: does not fit .* 1 missing keys \['features\.norm5\.weight'\]",
    ):
        convert_repository("tiny", converted_copy, cam_checkpoint=ckpt, log=lambda _: None)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(ConversionError, match=r"bad\.pth: not a readable PyTorch checkpoint"):
        convert_repository("tiny", converted_copy, cam_checkpoint=ckpt, log=lambda _: None)
    with pytest.raises(ConversionError, match=r"missing\.pth: no such checkpoint file"):
        convert_repository(
            "tiny", converted_copy, cam_checkpoint=tmp_path / "missing.pth", log=lambda _: None
        )
