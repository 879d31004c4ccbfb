"""`chexray convert`: argument parsing for the conversion pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from convert.presets import PRESETS
from convert.quantize import DEFAULT_IMAGES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="default: the five real architectures + CAM DenseNet-121; "
        "tiny: small networks with the same interface (tests, CI)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        metavar="DIR",
        help="folder of trained Keras files named after the members "
        "(xception, inception_resnet_v2, densenet121, densenet169, densenet201)"
        " as .keras, .h5 or .json + .h5; members without a file are random",
    )
    p.add_argument(
        "--cam-checkpoint",
        type=Path,
        metavar="FILE",
        help="PyTorch state dict of the CheXNet-style DenseNet-121 (14 classes)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="model repository to write (default: the model_dir setting, CHEXRAY_MODEL_DIR, "
        "else models_onnx)",
    )
    p.add_argument(
        "--keras-loader",
        choices=["auto", "keras3", "tf_keras"],
        default="auto",
        help="which Keras reads .h5 files (auto: tf_keras for Keras 2 files)",
    )
    p.add_argument(
        "--weights-matrix",
        type=Path,
        metavar="FILE",
        help='JSON {"member": [5 weights], ...}; default: the legacy application\'s matrix',
    )
    p.add_argument(
        "--member-size",
        action="append",
        default=[],
        metavar="NAME=HxW",
        help="train-time input size of one member, e.g. xception=299x299",
    )
    p.add_argument(
        "--member-order",
        action="append",
        default=[],
        metavar="NAME=F1,F2,...",
        help="the order in which a member emits the five findings, e.g. "
        "densenet169=Cardiomegaly,Edema,Consolidation,Atelectasis,"
        "'Pleural Effusion'",
    )
    p.add_argument("--no-fp16", action="store_true", help="skip the float16 variant")
    int8 = p.add_argument_group(
        "int8 (opt-in)",
        "a statically quantised copy of the fused graph for CPUs, calibrated on your own "
        "X-rays, served by OpenVINO only when CHEXRAY_PRECISION=int8 asks for it (never by "
        "auto) and only after its check against fp32 passed",
    )
    int8.add_argument(
        "--int8-calibration",
        type=Path,
        metavar="DIR",
        help="folder of your X-rays (PNG, JPEG, DICOM; searched recursively) to calibrate "
        "the int8 graph on",
    )
    int8.add_argument(
        "--int8-images",
        type=int,
        default=DEFAULT_IMAGES,
        metavar="N",
        help=f"calibrate on at most N of them (default {DEFAULT_IMAGES})",
    )
    int8.add_argument(
        "--int8-labelled",
        type=Path,
        metavar="CSV",
        help="a labelled set (CheXpert CSV, or `path` + the five findings): the int8 graph "
        "then passes only if no finding's AUC drops by more than 0.005 against fp32 "
        "(without one: the parity check, probabilities within 1e-2)",
    )
    int8.add_argument(
        "--int8-labelled-images",
        type=Path,
        metavar="DIR",
        help="the folder the labelled CSV's paths are relative to (default: its folder)",
    )
    int8.add_argument(
        "--int8-only",
        action="store_true",
        help="add (or rebuild) only the int8 graph of the existing repository, as it is "
        "(a calibrated one keeps its weights and thresholds); nothing else is rebuilt",
    )


def _size(text: str) -> tuple[str, tuple[int, int]]:
    name, _, size = text.partition("=")
    h, _, w = size.lower().partition("x")
    try:
        return name, (int(h), int(w or h))
    except ValueError:
        raise SystemExit(
            f"--member-size {text!r}: expected NAME=HxW, e.g. xception=299x299"
        ) from None


def _order(text: str) -> tuple[str, list[str]]:
    name, _, order = text.partition("=")
    return name, [f.strip() for f in order.split(",") if f.strip()]


def run(args: argparse.Namespace) -> int:
    from convert.errors import ConversionError
    from convert.pipeline import add_int8, convert_repository
    from server.runtime.repository import describe
    from server.settings import Settings, SettingsError

    try:
        out = args.out or Settings.from_env().model_dir
    except SettingsError as exc:
        print(f"chexray convert: error: {exc}")
        return 2
    int8 = _int8_request(args)
    if isinstance(int8, str):
        print(f"chexray convert: error: {int8}")
        return 2
    try:
        if args.int8_only:
            assert int8 is not None
            manifest = add_int8(out, int8)
        else:
            manifest = convert_repository(
                args.preset,
                out,
                weights_dir=args.weights,
                cam_checkpoint=args.cam_checkpoint,
                loader=args.keras_loader,
                weights_matrix=args.weights_matrix,
                member_sizes=dict(_size(s) for s in args.member_size),
                member_orders=dict(_order(s) for s in args.member_order),
                fp16=not args.no_fp16,
                int8=int8,
            )
    except ConversionError as exc:
        print(f"chexray convert: error: {exc}")
        return 2
    print()
    print(describe(manifest, out))
    return 0


def _int8_request(args: argparse.Namespace):
    """The int8 step asked for (None: none), or what is wrong with the options."""
    from convert.quantize import Int8Request

    if args.int8_calibration is None:
        given = [
            flag
            for flag, value in (
                ("--int8-labelled", args.int8_labelled),
                ("--int8-labelled-images", args.int8_labelled_images),
                ("--int8-only", args.int8_only or None),
            )
            if value is not None
        ]
        return f"{', '.join(given)} needs --int8-calibration DIR" if given else None
    if args.int8_images < 1:
        return f"--int8-images must be at least 1, got {args.int8_images}"
    if args.int8_labelled_images is not None and args.int8_labelled is None:
        return "--int8-labelled-images needs --int8-labelled CSV"
    return Int8Request(
        calibration=args.int8_calibration,
        images=args.int8_images,
        labelled_csv=args.int8_labelled,
        labelled_images=args.int8_labelled_images,
    )
