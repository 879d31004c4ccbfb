"""Child process: build or load the CAM DenseNet in torch, export to ONNX, check parity."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import msgspec
import numpy as np

from convert.errors import ConversionError
from convert.jobs import job_main
from convert.presets import CamSpec
from convert.reference import preprocess, random_images, seed_for
from server.runtime.contract import MEMBER_TOLERANCE
from server.runtime.manifest import FINDINGS, Parity

OPSET = 17


class CamJob(msgspec.Struct, frozen=True):
    spec: CamSpec
    checkpoint: str | None
    out: str
    parity_samples: int


class CamResult(msgspec.Struct, frozen=True):
    feature_map: tuple[int, int, int]
    parity: Parity
    seconds: float


def load_checkpoint(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ConversionError(f"{path}: expected a state dict (or a dict with 'state_dict')")
    return obj


def build(job: CamJob):
    import torch

    from convert.densenet import CamHead, DenseNet, normalise_state_dict

    spec = job.spec
    torch.manual_seed(seed_for(spec.name))
    net = DenseNet(
        spec.growth_rate, spec.block_config, spec.num_init_features, spec.bn_size, len(spec.classes)
    )
    if job.checkpoint is not None:
        path = Path(job.checkpoint)
        state = normalise_state_dict(load_checkpoint(path))
        expected = net.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ConversionError(
                f"{path}: does not fit {spec.architecture} with {len(spec.classes)} classes: "
                f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
                f"{unexpected[:5]}"
            )
        wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
        if wrong:
            k = wrong[0]
            raise ConversionError(
                f"{path}: {len(wrong)} tensors have the wrong shape, e.g. {k}: "
                f"{tuple(state[k].shape)} != {tuple(expected[k].shape)}"
            )
        net.load_state_dict(state)
    indices = [spec.class_map[f] for f in FINDINGS]
    return CamHead(net, indices).eval()


def run(job: CamJob) -> CamResult:
    import onnxruntime as ort
    import torch

    start = time.perf_counter()
    head = build(job)
    spec = job.spec
    h, w = spec.input_size
    x = preprocess(
        random_images(job.parity_samples, h, w, seed=seed_for(spec.name)), spec.preprocess
    )
    tmp = job.out + ".tmp"
    with torch.no_grad():
        expected = [t.numpy() for t in head(torch.from_numpy(x))]
        torch.onnx.export(
            head,
            (torch.zeros(1, 3, h, w),),
            tmp,
            input_names=["input"],
            output_names=["cam_probabilities", "cam_maps"],
            dynamic_axes={
                "input": {0: "batch"},
                "cam_probabilities": {0: "batch"},
                "cam_maps": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
    got = session.run(["cam_probabilities", "cam_maps"], {"input": x})
    # CAM maps scale with the feature magnitudes; compare them relative to their range.
    diff_p = float(np.abs(expected[0] - got[0]).max())
    scale = max(1.0, float(np.abs(expected[1]).max()))
    diff_m = float(np.abs(expected[1] - got[1]).max()) / scale
    diff = max(diff_p, diff_m)
    if not diff <= MEMBER_TOLERANCE:
        raise ConversionError(
            f"{spec.name}: parity check failed: ONNX differs from torch by {diff:.2e} "
            f"(> {MEMBER_TOLERANCE:.0e}) on {len(x)} random images"
        )
    Path(tmp).replace(job.out)
    seconds = time.perf_counter() - start
    print(f"      {spec.name}: exported in {seconds:.1f} s, parity {diff:.1e}", flush=True)
    _, _, fh, fw = expected[1].shape
    parity = Parity(diff, MEMBER_TOLERANCE, "torch", len(x))
    return CamResult((head.net.num_features, fh, fw), parity, seconds)


if __name__ == "__main__":
    job_main(CamJob, run)
    sys.exit(0)
