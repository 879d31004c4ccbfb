"""Fuses the five members and the CAM network into one ONNX graph, so a batch is one run.

    image uint8 [N, H, W]
      -> per network: cast, resize to its training size, (x - mean) / std, replicate the
         grey plane to its channels, its layout (NHWC for Keras, NCHW for torch)
      -> member probabilities, re-ordered to FINDINGS          member_probabilities [N, M, 5]
      -> per-finding weighted average (weights normalised)     probabilities [N, 5]
      -> CAM network: its own probabilities and CAM maps       cam_probabilities [N, 5]
                                                               cam_maps [N, 5, h, w]
Only onnx and onnxruntime are used here: no framework is needed to fuse or re-weight, so
`evaluation` may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convert.errors import ConversionError
from convert.reference import preprocess, random_images
from server.files import write_atomic
from server.runtime.contract import (
    CAM_MAPS,
    CAM_PROBABILITIES,
    FP16_TOLERANCE,
    FUSED_TOLERANCE,
    INPUT,
    MEMBER_PROBABILITIES,
    OUTPUTS,
    PROBABILITIES,
    WEIGHTS_INITIALIZER,
    input_spec,
    output_specs,
)
from server.runtime.manifest import FINDINGS, Parity, Preprocess, TensorSpec


@dataclass(frozen=True)
class Part:
    """One network as the fuser sees it: its ONNX file and what it wants in front."""

    name: str
    path: Path
    input_size: tuple[int, int]
    preprocess: Preprocess
    output_order: list[str] | None = None  # members only; None for the CAM network


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def _prefixed(part: Part, prefix: str) -> onnx.ModelProto:
    try:
        model = onnx.load(str(part.path))
    except Exception as exc:
        raise ConversionError(f"{part.path}: not a readable ONNX model ({exc})") from None
    return onnx.compose.add_prefix(model, prefix)


def _front(b: _Builder, grey: str, size: tuple[int, int], part: Part, p: str) -> str:
    """[N, 1, H, W] float grey -> the network's input tensor."""
    x = grey
    if tuple(part.input_size) != tuple(size):
        # sizes = [N, 1, h, w] with N taken from the batch at run time.
        shape = b.node("Shape", [grey], f"{p}shape", start=0, end=2)
        hw = b.const(f"{p}hw", np.asarray(part.input_size, np.int64))
        sizes = b.node("Concat", [shape, hw], f"{p}sizes", axis=0)
        x = b.node(
            "Resize",
            [grey, "", "", sizes],
            f"{p}resized",
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        )
    pre = part.preprocess
    c = pre.channels
    mean, std = np.asarray(pre.mean[:c], np.float32), np.asarray(pre.std[:c], np.float32)
    uniform = bool(np.all(mean == mean[0]) and np.all(std == std[0]))
    if uniform:  # normalise one plane, then replicate: c times less work
        x = b.node("Sub", [x, b.const(f"{p}mean", mean[:1])], f"{p}centred")
        x = b.node("Div", [x, b.const(f"{p}std", std[:1])], f"{p}scaled")
    if pre.layout == "NHWC":
        x = b.node("Transpose", [x], f"{p}nhwc", perm=[0, 2, 3, 1])
        axis, stat_shape = 3, (c,)
    else:
        axis, stat_shape = 1, (1, c, 1, 1)
    if c > 1:
        x = b.node("Concat", [x] * c, f"{p}channels", axis=axis)
    if not uniform:
        x = b.node("Sub", [x, b.const(f"{p}mean", mean.reshape(stat_shape))], f"{p}centred")
        x = b.node("Div", [x, b.const(f"{p}std", std.reshape(stat_shape))], f"{p}scaled")
    return x


def fuse(
    members: list[Part], cam: Part, weights: list[list[float]], size: tuple[int, int]
) -> onnx.ModelProto:
    """Build the fused graph; `weights` is members x findings, already normalised."""
    if len(weights) != len(members):
        raise ConversionError(f"weights matrix has {len(weights)} rows for {len(members)} members")
    b = _Builder()
    graph_nodes: list[onnx.NodeProto] = []
    value_info: list[onnx.ValueInfoProto] = []
    opsets: dict[str, int] = {}

    as_float = b.node("Cast", [INPUT], "image_float", to=TensorProto.FLOAT)
    grey = b.node("Unsqueeze", [as_float, b.const("axis1", np.asarray([1], np.int64))], "grey")

    def attach(part: Part, prefix: str) -> onnx.GraphProto:
        model = _prefixed(part, prefix)
        for op in model.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        g = model.graph
        if len(g.input) != 1:
            raise ConversionError(f"{part.path}: expected one input, found {len(g.input)}")
        net_in = _front(b, grey, size, part, prefix)
        b.node("Identity", [net_in], g.input[0].name)
        graph_nodes.extend(g.node)
        b.inits.extend(g.initializer)
        value_info.extend(g.value_info)
        return g

    rows = []
    for i, part in enumerate(members):
        prefix = f"m{i}_{part.name}/"
        g = attach(part, prefix)
        out = next((o.name for o in g.output if o.name == prefix + "probabilities"), None)
        if out is None:
            raise ConversionError(f"{part.path}: no 'probabilities' output")
        order = part.output_order or list(FINDINGS)
        if sorted(order) != sorted(FINDINGS):
            raise ConversionError(
                f"{part.name}: output order {order} is not a permutation of {FINDINGS}"
            )
        perm = np.asarray([order.index(f) for f in FINDINGS], np.int64)
        ordered = b.node(
            "Gather", [out, b.const(f"{prefix}perm", perm)], f"{prefix}ordered", axis=1
        )
        rows.append(b.node("Unsqueeze", [ordered, "axis1"], f"{prefix}row"))
    b.node("Concat", rows, MEMBER_PROBABILITIES, axis=1)
    w = b.const(WEIGHTS_INITIALIZER, np.asarray(weights, np.float32)[None])  # [1, M, 5]
    weighted = b.node("Mul", [MEMBER_PROBABILITIES, w], "weighted")
    b.node("ReduceSum", [weighted, "axis1"], PROBABILITIES, keepdims=0)

    g = attach(cam, "cam/")
    b.node("Identity", ["cam/cam_probabilities"], CAM_PROBABILITIES)
    b.node("Identity", ["cam/cam_maps"], CAM_MAPS)

    graph = helper.make_graph(
        b.nodes[:2] + graph_nodes + b.nodes[2:],
        "chexray_ensemble",
        [_value_info(input_spec(*size))],
        [_value_info(spec) for spec in output_specs(len(members), _cam_map_size(g))],
        initializer=b.inits,
        value_info=value_info,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="chexray-convert",
    )
    model.ir_version = min(model.ir_version, 9)
    model = onnx.shape_inference.infer_shapes(model)
    _topological_sort(model.graph)
    onnx.checker.check_model(model)
    return model


def _value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    return helper.make_tensor_value_info(spec.name, dtype, spec.shape)


def reweight(src: Path, dest: Path, weights: np.ndarray) -> None:
    """Write a copy of the fused graph at `src` to `dest` with its weights initializer
    replaced by `weights` [members, findings] (normalised per finding, as `fuse` takes them),
    cast to the initializer's own dtype. ConversionError when `src` is not a fused graph of
    that many members."""
    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise ConversionError(f"{src}: not a readable ONNX model ({exc})") from None
    expected = [1, *np.shape(weights)]
    for init in model.graph.initializer:
        if init.name == WEIGHTS_INITIALIZER:
            old = numpy_helper.to_array(init)
            if list(old.shape) != expected:
                raise ConversionError(
                    f"{src}: {WEIGHTS_INITIALIZER} is {list(old.shape)}, expected {expected}"
                )
            new = np.asarray(weights)[None].astype(old.dtype)
            init.CopyFrom(numpy_helper.from_array(new, init.name))
            break
    else:
        raise ConversionError(
            f"{src}: no {WEIGHTS_INITIALIZER!r} initializer; rebuild with `chexray convert`"
        )
    write_atomic(Path(dest), model.SerializeToString())


def _cam_map_size(g: onnx.GraphProto) -> tuple[int | str, int | str]:
    for o in g.output:
        if o.name.endswith("cam_maps"):
            dims = o.type.tensor_type.shape.dim
            return tuple(d.dim_value if d.HasField("dim_value") else "h" for d in dims[2:4])
    raise ConversionError("CAM network has no 'cam_maps' output")


def _topological_sort(graph: onnx.GraphProto) -> None:
    """The front-end nodes were built before the networks they feed: order them properly."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ConversionError(f"fused graph has unresolved inputs, e.g. {rest[0].input}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations for GPUs; the uint8 input and fp32 outputs are kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)


def cpu_session(path: Path):
    """An onnxruntime CPU session for checks (quiet logs, default options)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _resize_reference(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The exact Resize the fused graph uses, run alone (no other implementation matches it
    bit for bit), so that fused-vs-separate parity isolates the graph surgery."""
    n, h, w = images.shape
    node = helper.make_node(
        "Resize",
        ["x", "", "", "sizes"],
        ["y"],
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 1, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray([n, 1, *size], np.int64), "sizes")],
    )
    import onnxruntime as ort

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": images.astype(np.float32)[:, None]})[0][:, 0]


def fused_parity(
    fused_path: Path,
    members: list[Part],
    cam: Part,
    weights: list[list[float]],
    size: tuple[int, int],
    samples: int,
) -> Parity:
    """Fused graph vs each network's own ONNX file, fed by the NumPy reference front end."""
    images = random_images(samples, *size, seed=1234)
    got = dict(
        zip(OUTPUTS, cpu_session(fused_path).run(list(OUTPUTS), {INPUT: images}), strict=True)
    )
    diffs = []
    expected_members = []
    for part in [*members, cam]:
        src = (
            images
            if tuple(part.input_size) == tuple(size)
            else _resize_reference(images, part.input_size)
        )
        session = cpu_session(part.path)
        names = [o.name for o in session.get_outputs()]
        outs = session.run(names, {"input": preprocess(src, part.preprocess)})
        result = dict(zip(names, outs, strict=True))
        if part is cam:
            diffs.append(np.abs(result["cam_probabilities"] - got[CAM_PROBABILITIES]).max())
            scale = max(1.0, float(np.abs(result["cam_maps"]).max()))
            diffs.append(np.abs(result["cam_maps"] - got[CAM_MAPS]).max() / scale)
        else:
            order = part.output_order or list(FINDINGS)
            expected_members.append(result["probabilities"][:, [order.index(f) for f in FINDINGS]])
    stacked = np.stack(expected_members, axis=1)
    diffs.append(np.abs(stacked - got[MEMBER_PROBABILITIES]).max())
    ensemble = (stacked * np.asarray(weights, np.float32)[None]).sum(axis=1)
    diffs.append(np.abs(ensemble - got[PROBABILITIES]).max())
    diff = float(max(diffs))
    if not diff <= FUSED_TOLERANCE:
        raise ConversionError(
            f"{fused_path}: fused graph differs from the separate networks by {diff:.2e} "
            f"(> {FUSED_TOLERANCE:.0e})"
        )
    return Parity(diff, FUSED_TOLERANCE, "separate networks", samples)


def fp16_parity(fp32_path: Path, fp16_path: Path, size: tuple[int, int], samples: int) -> Parity:
    images = random_images(samples, *size, seed=4321)
    compared = [PROBABILITIES, MEMBER_PROBABILITIES, CAM_PROBABILITIES]
    a = cpu_session(fp32_path).run(compared, {INPUT: images})
    b = cpu_session(fp16_path).run(compared, {INPUT: images})
    diff = float(max(np.abs(x - y).max() for x, y in zip(a, b, strict=True)))
    if not diff <= FP16_TOLERANCE:
        raise ConversionError(
            f"{fp16_path}: fp16 graph differs from fp32 by {diff:.2e} (> {FP16_TOLERANCE:.0e})"
        )
    return Parity(diff, FP16_TOLERANCE, "fused fp32", samples)
