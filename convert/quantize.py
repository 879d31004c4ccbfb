"""int8, opt-in: post-training static quantisation of the fused fp32 graph, calibrated on the
user's own X-rays, and its checks.

The quantiser is onnxruntime's `quantize_static`: QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantised operation, so any ONNX runtime reads the
file), per-channel symmetric int8 weights, asymmetric uint8 activations whose ranges are
the min/max seen on the calibration images. Only Conv, MatMul and Gemm are quantised: they
hold nearly all the work, and quantising the rest (the fused graph's weighted average of
the members included) broke OpenVINO's answers (probabilities off by 0.5). OpenVINO serves
the result (server/runtime/backends.py).

Measured on the default preset (random weights, 224x224, check set of 16 images) on a
2-core AMD EPYC Zen 4 (AVX512-VNNI), ms/image at batch 4, in one run beside each other
(this machine is shared and noisy: the least of several runs):

    onnxruntime fp32 (reference)                          137
    OpenVINO bf16                                          60    max |diff| 4e-5
    quantize_static Conv/MatMul/Gemm, onnxruntime CPU     105    max |diff| 1e-4
    quantize_static Conv/MatMul/Gemm, OpenVINO             49    max |diff| 1.5e-3  <- chosen
    quantize_static all ops but the tail, OpenVINO         59    max |diff| 7e-4
    NNCF (ONNX, performance preset, tail ignored), OpenVINO 41   max |diff| 1.9e-3

NNCF's graph was the fastest by about 15 %, but onnxruntime cannot run it (QLinearConv
refuses its per-channel activation zero points), it adds five packages to the converter,
and it does not import where torch is blocked (its `find_spec("torch")` raises there); the
onnxruntime quantiser needs nothing new and its graph runs on both runtimes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from convert.errors import ConversionError
from server.runtime import contract
from server.runtime.manifest import FINDINGS, Manifest, Parity, PrecisionCheck

INT8_FILE = "ensemble.int8.onnx"
DEFAULT_IMAGES = 100
# What goes into the quantiser besides the graph and the images: part of the build key.
SETTINGS = {
    "quantiser": "onnxruntime.quantize_static",
    "format": "QDQ",
    "ops": ["Conv", "MatMul", "Gemm"],
    "per_channel": True,
    "activations": "uint8 asymmetric",
    "weights": "int8 symmetric",
    "calibration": "MinMax",
    "revision": 1,
}
CALIBRATION_BATCH = 4


@dataclass(frozen=True)
class Int8Request:
    """What `chexray convert --int8-calibration DIR` asks for."""

    calibration: Path  # folder of the user's X-rays (PNG, JPEG, DICOM), searched recursively
    images: int = DEFAULT_IMAGES  # at most this many of them
    labelled_csv: Path | None = None  # a labelled set (CheXpert CSV) to gate on by AUC
    labelled_images: Path | None = None  # the folder its paths are relative to


def calibration_images(folder: Path, size: tuple[int, int], limit: int) -> np.ndarray:
    """Up to `limit` of the user's X-rays at model resolution (uint8 [N, H, W]), decoded and
    resized by the server's own code; ConversionError when the folder holds none."""
    from server.runtime.precision import load_images_at
    from server.settings import Settings

    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"--int8-calibration {folder}: no such folder")
    if limit < 1:
        raise ConversionError(f"--int8-images must be at least 1, got {limit}")
    try:
        return load_images_at(folder, size, Settings(), limit)
    except ValueError as exc:
        raise ConversionError(
            f"--int8-calibration {exc}: the int8 graph is calibrated on your own X-rays; "
            "give a folder that holds some"
        ) from None


def images_digest(images: np.ndarray) -> str:
    """What the calibration saw, for the build key: the model-resolution pixels."""
    digest = hashlib.sha256(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images, np.uint8).tobytes())
    return digest.hexdigest()


def quantize(src: Path, dest: Path, images: np.ndarray) -> None:
    """Write the int8 QDQ copy of the fused graph `src` to `dest`, calibrated on `images`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                {contract.INPUT: images[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(images), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=".int8-", suffix=".onnx", dir=dest.parent)
    os.close(fd)
    try:
        # The calibrator writes its augmented copy of the graph in a temporary folder.
        with tempfile.TemporaryDirectory(prefix="chexray-int8-") as work:
            quantize_static(
                str(src),
                tmp,
                Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=SETTINGS["ops"],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                calibration_providers=["CPUExecutionProvider"],
                **_work_dir(work),
            )
        os.replace(tmp, dest)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, ConversionError):
            raise
        raise ConversionError(f"int8 quantisation of {src} failed: {exc}") from exc


def _work_dir(work: str) -> dict[str, object]:
    """Where quantize_static keeps its temporary files, on onnxruntime versions that say."""
    import inspect

    from onnxruntime.quantization import quantize_static

    params = inspect.signature(quantize_static).parameters
    return {"calibration_tmp_dir": work} if "calibration_tmp_dir" in params else {}


# -- running the graphs (offline: plain sessions, no engine) -------------------------------


def _fp32_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from convert.fuse import cpu_session

    session = cpu_session(path)
    return lambda x: session.run([contract.PROBABILITIES], {contract.INPUT: x})[0]


def int8_runner(path: Path, openvino: bool) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The int8 graph run as the server serves it (OpenVINO where installed), and by what."""
    if not openvino:
        return _fp32_runner(path), "onnxruntime CPU"
    import openvino as ov

    from server.runtime.openvino_backend import HINTS

    compiled = ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": HINTS["int8"]}
    )
    request = compiled.create_infer_request()
    port = compiled.output(contract.PROBABILITIES)
    return lambda x: np.array(request.infer({0: x})[port]), "OpenVINO CPU"


def probabilities(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    out = [run(images[i : i + CALIBRATION_BATCH]) for i in range(0, len(images), CALIBRATION_BATCH)]
    return np.concatenate(out).astype(np.float64)


def int8_parity(fp32: Path, int8: Path, images: np.ndarray, openvino: bool) -> Parity:
    """The int8 graph against the fp32 graph (onnxruntime CPU) on the calibration images."""
    expected = probabilities(_fp32_runner(fp32), images)
    run, by = int8_runner(int8, openvino)
    got = probabilities(run, images)
    return Parity(
        max_abs_diff=float(np.abs(got - expected).max()),
        tolerance=contract.PRECISION_TOLERANCE,
        against=f"fused fp32 graph (onnxruntime CPU), int8 run by {by}, on the calibration images",
        samples=len(images),
    )


# -- the evaluate gate ----------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledImages:
    source: str
    images: np.ndarray  # uint8 [n, H, W], the readable ones
    labels: np.ndarray  # [n, 5]: 1, 0 or NaN (not counted)
    unreadable: int


def labelled_images(csv: Path, root: Path | None, size: tuple[int, int]) -> LabelledImages:
    """A labelled set (CheXpert CSV or plain, evaluation/labels.py) at model resolution."""
    from evaluation.labels import LabelError, read_labelled_csv
    from server.runtime.precision import read_model_input
    from server.settings import Settings

    settings = Settings()
    try:
        labelled = read_labelled_csv(csv, root)
    except LabelError as exc:
        raise ConversionError(f"--int8-labelled: {exc}") from None
    images, rows, unreadable = [], [], 0
    for i, path in enumerate(labelled.paths):
        pixels = read_model_input(path, size, settings)
        if pixels is None:
            unreadable += 1
            continue
        images.append(pixels)
        rows.append(i)
    if not images:
        raise ConversionError(f"--int8-labelled {csv}: none of its {len(labelled.paths)} images")
    return LabelledImages(labelled.source, np.stack(images), labelled.labels[rows], unreadable)


def auc_drops(labels: np.ndarray, fp32: np.ndarray, int8: np.ndarray) -> list[float | None]:
    """Per finding, fp32's AUC minus int8's over the counted rows (None: one class only)."""
    from evaluation.labels import counted, has_both_classes
    from evaluation.metrics import auc

    drops: list[float | None] = []
    for d in range(len(FINDINGS)):
        y, s32 = counted(labels, fp32, d)
        _, s8 = counted(labels, int8, d)
        drops.append(float(auc(y, s32).value - auc(y, s8).value) if has_both_classes(y) else None)
    return drops


def evaluate_check(
    directory: Path, manifest: Manifest, labelled: LabelledImages, openvino: bool
) -> PrecisionCheck:
    """The int8 graph's check on a labelled set: passed when no finding's AUC drops by more
    than INT8_AUC_DROP against fp32; the parity numbers are recorded beside."""
    import tempfile

    from server.runtime.backends import Machine
    from server.runtime.precision import compare, int8_choice, side_by_side
    from server.settings import Settings

    if manifest.fused_int8 is None:
        raise ConversionError("the repository has no int8 graph to check")
    choice = int8_choice(Machine(cuda=False, openvino=openvino, bf16=False))
    with tempfile.TemporaryDirectory(prefix="chexray-int8-") as tmp:
        settings = Settings(model_dir=Path(directory), data_dir=Path(tmp), optimized_cache=False)
        expected, got, seconds = side_by_side(
            choice, manifest, Path(directory), settings, labelled.images
        )
    drops = auc_drops(labelled.labels, expected, got)
    if all(d is None for d in drops):
        raise ConversionError(
            f"--int8-labelled {labelled.source}: no finding has both positive and negative "
            "labels among its readable images: no AUC to compare"
        )
    what = f"{len(labelled.images)} labelled images of {labelled.source}"
    check = compare(choice.label, expected, got, manifest.thresholds.values, what, seconds)
    limit = contract.INT8_AUC_DROP
    return msgspec.structs.replace(
        check,
        auc_drop=drops,
        auc_set=labelled.source,
        auc_limit=limit,
        passed=all(d is None or d <= limit for d in drops),
    )
