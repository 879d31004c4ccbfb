"""A tiny model repository built in code with onnx's helper API: no TensorFlow, no torch.

It has the interface of `chexray convert --preset tiny` (convert/presets.py): the same
member names, input sizes, preprocessing, output orders (so the fused graph resizes one
member and re-orders two), the same CAM class map and 4x4 feature map, the legacy
application's weights and thresholds, an fp16 variant. The networks are small and
different: a member is a patch convolution, ReLU, global average pooling, a dense layer
and a sigmoid, NHWC like the Keras exports (one of them takes a single grey channel); the
CAM network is two patch convolutions to a [16, 4, 4] feature map with a 14-class head,
NCHW like the torch export, emitting its probabilities for the five findings and their
class activation maps.

The parts are joined by the converter's own `convert.fuse.fuse` (onnx only) and the
manifest is written with the server's own types, so `verify_repository` accepts it and
the engine serves it like a converted repository. Parity records say what was compared:
each network against a NumPy implementation of the same weights, the fused graph against
the separate networks (`convert.fuse.fused_parity`), fp16 against fp32. Nothing here
compares against Keras or torch, and no record claims to.

    python -m tests.support.tiny_repo DIR   # build one and print how long it took
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from convert.fuse import Part, cpu_session, fp16_parity, fuse, fused_parity, to_fp16
from convert.presets import (
    DEFAULT_THRESHOLDS,
    DEFAULT_THRESHOLDS_SOURCE,
    LEGACY_WEIGHTS,
    get_preset,
)
from convert.reference import preprocess, random_images, seed_for
from server.runtime.contract import MEMBER_TOLERANCE
from server.runtime.manifest import (
    FINDINGS,
    CamNetwork,
    Manifest,
    Member,
    Parity,
    Thresholds,
    graph_file,
    normalise_weights,
    sha256_file,
)
from server.runtime.repository import install_manifest, new_manifest

OPSET = 17
IR_VERSION = 9
PATCH = 8  # members: one convolution over 8x8 patches (stride 8)
MEMBER_FILTERS = 8
CAM_STAGES = ((8, 8), (16, 4))  # CAM network: (filters, patch) per convolution: 128 -> 4
# One member reads a single grey channel, as a Keras member may (check_interface allows it).
GREY_MEMBERS = {"densenet201"}
ARCHITECTURE = "tiny-onnx"
BUILD_REVISION = 1  # bump when the networks built here change


@dataclass(frozen=True)
class _Net:
    model: onnx.ModelProto
    weights: dict[str, np.ndarray]


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="chexray-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)


def member_net(size: tuple[int, int], channels: int, seed: int) -> _Net:
    """input float [N, h, w, c] (NHWC) -> probabilities [N, 5] and probe [N, filters]
    (the pooled features, as the Keras export's parity probe)."""
    h, w = size
    rng = np.random.default_rng(seed)
    k = MEMBER_FILTERS
    weights = {
        "conv_w": _he(rng, (k, channels, PATCH, PATCH), channels * PATCH * PATCH),
        "conv_b": rng.normal(0.0, 0.05, k).astype(np.float32),
        "dense_w": rng.normal(0.0, 3.0 / np.sqrt(k), (k, len(FINDINGS))).astype(np.float32),
        "dense_b": rng.normal(0.0, 0.3, len(FINDINGS)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], strides=[PATCH, PATCH]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["probe"]),
        helper.make_node("Gemm", ["probe", "dense_w", "dense_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_member",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", h, w, channels])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 5]),
            helper.make_tensor_value_info("probe", TensorProto.FLOAT, ["batch", k]),
        ],
        initializer=[numpy_helper.from_array(v, n) for n, v in weights.items()],
    )
    return _Net(_model(graph), weights)


def _patch_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NumPy reference: a convolution whose kernel equals its stride, NCHW."""
    n, c, h, width = x.shape
    p = w.shape[-1]
    patches = x.reshape(n, c, h // p, p, width // p, p)
    return np.einsum("ncipjq,fcpq->nfij", patches, w) + b[None, :, None, None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def member_reference(weights: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    x = x.astype(np.float64).transpose(0, 3, 1, 2)
    w = {n: v.astype(np.float64) for n, v in weights.items()}
    probe = np.maximum(_patch_conv(x, w["conv_w"], w["conv_b"]), 0).mean(axis=(2, 3))
    return {"probabilities": _sigmoid(probe @ w["dense_w"] + w["dense_b"]), "probe": probe}


def cam_net(size: tuple[int, int], classes: int, indices: list[int], seed: int) -> _Net:
    """input float [N, 3, H, W] (NCHW) -> cam_probabilities [N, 5] (sigmoid of the
    14-class head, the five findings' classes) and cam_maps [N, 5, h, w]: each finding's
    classifier row applied to the ReLU'd last feature map, as convert.densenet.CamHead."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    nodes = []
    x, channels, (h, w) = "input", 3, size
    for i, (filters, patch) in enumerate(CAM_STAGES):
        weights[f"conv{i}_w"] = _he(rng, (filters, channels, patch, patch), channels * patch**2)
        weights[f"conv{i}_b"] = rng.normal(0.0, 0.05, filters).astype(np.float32)
        nodes.append(
            helper.make_node(
                "Conv", [x, f"conv{i}_w", f"conv{i}_b"], [f"conv{i}"], strides=[patch, patch]
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x, channels, h, w = f"relu{i}", filters, h // patch, w // patch
    k = len(indices)
    classifier = rng.normal(0.0, 2.0 / np.sqrt(channels), (classes, channels)).astype(np.float32)
    weights["classifier_w"] = np.ascontiguousarray(classifier.T)  # [C, classes] for Gemm
    weights["classifier_b"] = rng.normal(0.0, 0.3, classes).astype(np.float32)
    weights["indices"] = np.asarray(indices, np.int64)
    weights["cam_w"] = classifier[indices]  # [5, C]
    weights["flat_shape"] = np.asarray([0, channels, h * w], np.int64)
    weights["map_shape"] = np.asarray([0, k, h, w], np.int64)
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("Gemm", ["features", "classifier_w", "classifier_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["all_probabilities"]),
        helper.make_node("Gather", ["all_probabilities", "indices"], ["cam_probabilities"], axis=1),
        helper.make_node("Reshape", [x, "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["cam_w", "flat"], ["cams_flat"]),
        helper.make_node("Reshape", ["cams_flat", "map_shape"], ["cam_maps"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cam",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, *size])],
        [
            helper.make_tensor_value_info("cam_probabilities", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("cam_maps", TensorProto.FLOAT, ["batch", k, h, w]),
        ],
        initializer=[numpy_helper.from_array(v, n) for n, v in weights.items()],
    )
    return _Net(_model(graph), weights)


def cam_reference(weights: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    x = x.astype(np.float64)
    for i in range(len(CAM_STAGES)):
        conv = _patch_conv(x, weights[f"conv{i}_w"].astype(np.float64), weights[f"conv{i}_b"])
        x = np.maximum(conv, 0)
    logits = x.mean(axis=(2, 3)) @ weights["classifier_w"] + weights["classifier_b"]
    probabilities = _sigmoid(logits)[:, weights["indices"]]
    maps = np.einsum("kc,nchw->nkhw", weights["cam_w"].astype(np.float64), x)
    return {"cam_probabilities": probabilities, "cam_maps": maps}


def _parity(path: Path, reference: dict[str, np.ndarray], x: np.ndarray) -> Parity:
    """The ONNX file run by onnxruntime vs the NumPy reference, each output relative to its
    own magnitude where that exceeds 1 (as the converter compares probes and CAM maps)."""
    session = cpu_session(path)
    names = list(reference)
    got = dict(zip(names, session.run(names, {"input": x}), strict=True))
    diff = max(
        float(np.abs(reference[n] - got[n]).max()) / max(1.0, float(np.abs(reference[n]).max()))
        for n in names
    )
    if not diff <= MEMBER_TOLERANCE:
        raise RuntimeError(f"{path}: ONNX differs from its NumPy reference by {diff:.2e}")
    return Parity(diff, MEMBER_TOLERANCE, "numpy reference", len(x))


def _key(*parts: object) -> str:
    return hashlib.sha256(msgspec.json.encode(["tests.support.tiny_repo", *parts])).hexdigest()


def build_tiny_repo(out: Path) -> Manifest:
    """Write the repository into `out` (created if missing) and return its manifest."""
    out = Path(out)
    preset = get_preset("tiny")
    samples = preset.parity_samples

    members: list[Member] = []
    for spec in preset.members:
        channels = 1 if spec.name in GREY_MEMBERS else 3
        pre = msgspec.structs.replace(spec.preprocess, channels=channels)
        seed = seed_for(spec.name)
        net = member_net(spec.input_size, channels, seed)
        rel = f"parts/{spec.name}.onnx"
        _save(net.model, out / rel)
        x = preprocess(random_images(samples, *spec.input_size, seed=seed), pre)
        members.append(
            Member(
                name=spec.name,
                architecture=ARCHITECTURE,
                input_size=spec.input_size,
                file=rel,
                sha256=sha256_file(out / rel),
                source=None,
                trained=False,
                loader="random",
                preprocess=pre,
                output_order=spec.output_order,
                parity=_parity(out / rel, member_reference(net.weights, x), x),
                build_key=_key(BUILD_REVISION, spec, channels, seed),
            )
        )

    cs = preset.cam
    seed = seed_for(cs.name)
    indices = [cs.class_map[f] for f in FINDINGS]
    net = cam_net(cs.input_size, len(cs.classes), indices, seed)
    cam_rel = f"parts/{cs.name}.onnx"
    _save(net.model, out / cam_rel)
    x = preprocess(random_images(samples, *cs.input_size, seed=seed), cs.preprocess)
    h, w = cs.input_size
    for _, patch in CAM_STAGES:
        h, w = h // patch, w // patch
    cam = CamNetwork(
        name=cs.name,
        architecture=ARCHITECTURE + "-cam",
        input_size=cs.input_size,
        file=cam_rel,
        sha256=sha256_file(out / cam_rel),
        source=None,
        trained=False,
        preprocess=cs.preprocess,
        classes=cs.classes,
        class_map=cs.class_map,
        feature_map=(CAM_STAGES[-1][0], h, w),
        parity=_parity(out / cam_rel, cam_reference(net.weights, x), x),
        build_key=_key(BUILD_REVISION, cs, seed),
    )

    matrix = [LEGACY_WEIGHTS[m.name] for m in members]
    normalised = normalise_weights(matrix)
    parts = [
        Part(m.name, out / m.file, m.input_size, m.preprocess, m.output_order) for m in members
    ]
    cam_part = Part(cam.name, out / cam.file, cam.input_size, cam.preprocess)
    fused_rel = "ensemble.onnx"
    fused_model = fuse(parts, cam_part, normalised, preset.input_size)
    _save(fused_model, out / fused_rel)
    parity = fused_parity(out / fused_rel, parts, cam_part, normalised, preset.input_size, samples)
    fused_key = _key([m.sha256 for m in members], cam.sha256, normalised, preset.input_size)
    fused = graph_file(out, fused_rel, "float32", parity, fused_key)

    rel16 = "ensemble.fp16.onnx"
    _save(to_fp16(fused_model), out / rel16)
    parity16 = fp16_parity(out / fused_rel, out / rel16, preset.input_size, samples)
    fused16 = graph_file(out, rel16, "float16", parity16, _key(fused.sha256))

    manifest = new_manifest(
        preset=preset.name,
        input_size=preset.input_size,
        members=members,
        cam=cam,
        weights=matrix,
        thresholds=Thresholds(list(DEFAULT_THRESHOLDS), DEFAULT_THRESHOLDS_SOURCE),
        fused=fused,
        fused_fp16=fused16,
        opset=OPSET,
        versions={"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    )
    install_manifest(out, manifest)
    return manifest


if __name__ == "__main__":
    started = time.perf_counter()
    m = build_tiny_repo(Path(sys.argv[1]))
    print(f"{m.version} in {time.perf_counter() - started:.2f} s")
