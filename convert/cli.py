"""`chexray convert`: argument parsing for the conversion pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from convert.presets import PRESETS


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
    from convert.pipeline import convert_repository
    from server.runtime.repository import describe
    from server.settings import Settings, SettingsError

    try:
        out = args.out or Settings.from_env().model_dir
    except SettingsError as exc:
        print(f"chexray convert: error: {exc}")
        return 2
    try:
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
        )
    except ConversionError as exc:
        print(f"chexray convert: error: {exc}")
        return 2
    print()
    print(describe(manifest, out))
    return 0
