"""Child process: build or load Keras members, export each to ONNX, check parity.

Run by `convert.jobs.run_job`; imports tensorflow (and tf_keras for Keras 2 files).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import msgspec
import numpy as np

from convert.errors import ConversionError
from convert.jobs import job_main
from convert.presets import MemberSpec
from convert.reference import preprocess, random_images, seed_for
from convert.sources import Loader, Source
from server.runtime.contract import MEMBER_TOLERANCE
from server.runtime.manifest import FINDINGS, Parity

OPSET = 17
# Bump when the export itself changes, so rebuilds redo files made the old way.
EXPORT_REVISION = 2


class KerasItem(msgspec.Struct, frozen=True):
    spec: MemberSpec
    source: Source | None
    out: str
    parity_samples: int


class KerasJob(msgspec.Struct, frozen=True):
    loader: Loader
    items: list[KerasItem]


class KerasResult(msgspec.Struct, frozen=True):
    name: str
    input_size: tuple[int, int]
    channels: int
    parity: Parity
    seconds: float


def _log(message: str) -> None:
    print(message, flush=True)


def build_architecture(keras: Any, spec: MemberSpec, channels: int = 3) -> Any:
    """The legacy application's layout: a backbone without its top, global average pooling,
    Dense(5)."""
    h, w = spec.input_size
    if spec.architecture == "tiny-cnn":
        inputs = keras.Input((h, w, channels), name="image")
        x = inputs
        for filters in spec.widths:
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation("relu")(x)
        backbone_out = x
    else:
        try:
            factory = getattr(keras.applications, spec.architecture)
        except AttributeError:
            raise ConversionError(
                f"{spec.name}: unknown Keras architecture {spec.architecture!r}"
            ) from None
        backbone = factory(include_top=False, weights=None, input_shape=(h, w, channels))
        inputs, backbone_out = backbone.input, backbone.output
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool_head")(backbone_out)
    outputs = keras.layers.Dense(len(FINDINGS), activation="sigmoid", name="findings")(x)
    return keras.Model(inputs, outputs, name=spec.name)


def load_member(keras: Any, item: KerasItem) -> Any:
    spec, src = item.spec, item.source
    if src is None:
        keras.utils.set_random_seed(seed_for(spec.name))
        return build_architecture(keras, spec)
    try:
        if src.kind in ("keras", "h5-model"):
            return keras.models.load_model(src.path, compile=False)
        if src.kind == "json+h5":
            with open(src.path) as fh:
                model = keras.models.model_from_json(fh.read())
            model.load_weights(src.weights_path)
            return model
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"{src.path}: cannot be loaded by {src.loader} as a {src.kind} file: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    # Weights only: they must fit the default architecture and head exactly.
    model = build_architecture(keras, spec)
    try:
        model.load_weights(src.path)
    except Exception as exc:
        raise ConversionError(
            f"{src.path}: weights do not fit {spec.architecture} + GlobalAveragePooling2D + "
            f"Dense(5, sigmoid) at {spec.input_size}: {type(exc).__name__}: {exc}"
        ) from None
    return model


def _shape(tensor: Any) -> tuple:
    shape = tensor.shape
    return tuple(shape.as_list()) if hasattr(shape, "as_list") else tuple(shape)


def check_interface(model: Any, item: KerasItem) -> tuple[tuple[int, int], int]:
    """One image input (batch, h, w, 1 or 3) and one output of five probabilities."""
    where = item.source.path if item.source else item.spec.name
    if len(model.inputs) != 1:
        raise ConversionError(
            f"{where}: the model has {len(model.inputs)} inputs; a member takes one image"
        )
    if len(model.outputs) != 1:
        raise ConversionError(
            f"{where}: the model has {len(model.outputs)} outputs; a member has one output "
            f"of {len(FINDINGS)} sigmoid probabilities"
        )
    in_shape, out_shape = _shape(model.inputs[0]), _shape(model.outputs[0])
    if len(in_shape) != 4 or in_shape[3] not in (1, 3):
        raise ConversionError(
            f"{where}: input shape {in_shape}; expected (batch, height, width, 1 or 3)"
        )
    if len(out_shape) != 2 or out_shape[1] != len(FINDINGS):
        raise ConversionError(
            f"{where}: output shape {out_shape}; expected (batch, {len(FINDINGS)}): one "
            f"sigmoid probability per finding ({', '.join(FINDINGS)})"
        )
    h = in_shape[1] or item.spec.input_size[0]
    w = in_shape[2] or item.spec.input_size[1]
    return (int(h), int(w)), int(in_shape[3])


def with_probe(keras: Any, model: Any) -> Any:
    """The model with a second output: the input of its last layer (pooled features or
    logits). Saturated sigmoids can agree while everything before them differs; the
    probe makes the parity check see the network itself."""
    try:
        probe = model.layers[-1].input
        if isinstance(probe, list | tuple) or len(_shape(probe)) < 2:
            return model
        return keras.Model(model.inputs, [model.outputs[0], probe])
    except (AttributeError, ValueError):
        return model


def export(tf: Any, tf2onnx: Any, model: Any, size: tuple[int, int], channels: int) -> Any:
    signature = [tf.TensorSpec((None, *size, channels), tf.float32, name="input")]
    two = len(model.outputs) == 2

    @tf.function(input_signature=signature)
    def serve(x: Any) -> dict:
        y = model(x, training=False)
        if isinstance(y, dict):
            y = list(y.values())
        if not two and isinstance(y, list | tuple):
            (y,) = y
        return {"probabilities": y[0], "probe": y[1]} if two else {"probabilities": y}

    # from_function returns outputs sorted by key: look them up by name.
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    names = sorted(o.name for o in proto.graph.output)
    if names != sorted(["probabilities", "probe"] if two else ["probabilities"]):
        raise ConversionError(f"unexpected ONNX interface: outputs {names}")
    if [i.name for i in proto.graph.input] != ["input"]:
        raise ConversionError(f"unexpected ONNX interface: inputs {list(proto.graph.input)}")
    return proto


def check_parity(model: Any, path: str, item: KerasItem, size: tuple[int, int], channels: int):
    import onnxruntime as ort

    spec = item.spec
    pre = msgspec.structs.replace(spec.preprocess, channels=channels, layout="NHWC")
    x = preprocess(random_images(item.parity_samples, *size, seed=seed_for(spec.name)), pre)
    expected = model(x, training=False)
    expected = [
        np.asarray(e, np.float32)
        for e in (expected if isinstance(expected, list | tuple) else [expected])
    ]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = ["probabilities", "probe"][: len(expected)]
    got = session.run(names, {"input": x})
    where = item.source.path if item.source else spec.name
    probs = expected[0]
    if probs.min() < 0 or probs.max() > 1:
        raise ConversionError(
            f"{where}: outputs range {probs.min():.3g}..{probs.max():.3g}, not "
            "probabilities: a member must end in a sigmoid"
        )
    # The probe is compared relative to its own magnitude, like-for-like with probabilities.
    diffs = [
        float(np.abs(e - g).max()) / max(1.0, float(np.abs(e).max()))
        for e, g in zip(expected, got, strict=True)
    ]
    diff = max(diffs)
    if not diff <= MEMBER_TOLERANCE:
        raise ConversionError(
            f"{where}: parity check failed: ONNX differs from Keras by {diff:.2e} "
            f"(> {MEMBER_TOLERANCE:.0e}) on {len(x)} random images"
        )
    return Parity(diff, MEMBER_TOLERANCE, "keras", len(x))


def run(job: KerasJob) -> list[KerasResult]:
    if job.loader == "tf_keras":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf2onnx

    if job.loader == "tf_keras":
        import tf_keras as keras
    else:
        import keras
    results = []
    for item in job.items:
        start = time.perf_counter()
        model = load_member(keras, item)
        size, channels = check_interface(model, item)
        model = with_probe(keras, model)
        proto = export(tf, tf2onnx, model, size, channels)
        tmp = item.out + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(proto.SerializeToString())
        parity = check_parity(model, tmp, item, size, channels)
        os.replace(tmp, item.out)
        seconds = time.perf_counter() - start
        _log(
            f"      {item.spec.name}: exported in {seconds:.1f} s, parity {parity.max_abs_diff:.1e}"
        )
        results.append(KerasResult(item.spec.name, size, channels, parity, seconds))
        del model
        keras.backend.clear_session()
    return results


if __name__ == "__main__":
    job_main(KerasJob, run)
    sys.exit(0)
