"""What each preset builds: the five ensemble members and the CAM network.

Plain data, no framework imports: the jobs that import tensorflow or torch read these
specs in their own processes.
"""

from __future__ import annotations

import msgspec

from server.runtime.manifest import FINDINGS, Preprocess

# The legacy application's Keras members: Xception and Inception-ResNet-v2 used Keras
# `preprocess_input` ("tf": pixels to [-1, 1]); the DenseNets used x / 255.
TF_MODE = Preprocess(mode="tf", mean=[127.5] * 3, std=[127.5] * 3)
UNIT_MODE = Preprocess(mode="unit", mean=[0.0] * 3, std=[255.0] * 3)
# torchvision / CheXNet: ImageNet statistics on RGB, NCHW.
IMAGENET_MODE = Preprocess(
    mode="imagenet",
    mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
    std=[0.229 * 255, 0.224 * 255, 0.225 * 255],
    layout="NCHW",
)

# DenseNet-169 and -201 were trained on CheXpert's CSV column order and emit the five
# findings in that order; the legacy application re-mapped them in code, the fused graph
# does it now.
CHEXPERT_ORDER = ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion"]

# The legacy application's hand-set ensemble weights (members x findings, FINDINGS order).
LEGACY_WEIGHTS: dict[str, list[float]] = {
    "xception": [0.50, 0.30, 1.00, 1.10, 1.00],
    "inception_resnet_v2": [0.40, 1.00, 0.70, 0.00, 0.75],
    "densenet121": [1.50, 0.20, 1.00, 0.10, 0.40],
    "densenet169": [0.80, 0.50, 0.90, 0.00, 0.75],
    "densenet201": [0.80, 0.50, 0.60, 0.00, 0.10],
}

# The legacy application's Youden thresholds were computed on its weighted sum divided by 5
# once more; on a true weighted average they are 5x larger.
LEGACY_THRESHOLDS = [0.04824, 0.02167, 0.0107, 0.04131, 0.04202]
DEFAULT_THRESHOLDS = [round(t * 5, 6) for t in LEGACY_THRESHOLDS]
# Recorded in every manifest (and so in its version hash).
DEFAULT_THRESHOLDS_SOURCE = (
    "the legacy application's Youden thresholds x5 (it divided its weighted average by 5 "
    "again); to be refitted on labelled validation data"
)

# ChestX-ray14 classes in CheXNet's output order.
CHESTXRAY14 = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
CAM_CLASS_MAP = {
    "Atelectasis": 0,
    "Cardiomegaly": 1,
    "Consolidation": 8,
    "Edema": 9,
    "Pleural Effusion": 2,
}


class MemberSpec(msgspec.Struct, frozen=True):
    name: str
    architecture: str  # a keras.applications name, or "tiny-cnn"
    input_size: tuple[int, int]
    preprocess: Preprocess
    output_order: list[str]
    widths: list[int] = []  # tiny-cnn only: filters per conv stage


class CamSpec(msgspec.Struct, frozen=True):
    name: str
    architecture: str
    input_size: tuple[int, int]
    preprocess: Preprocess
    growth_rate: int
    block_config: tuple[int, ...]
    num_init_features: int
    bn_size: int
    classes: list[str]
    class_map: dict[str, int]


class Preset(msgspec.Struct, frozen=True):
    name: str
    input_size: tuple[int, int]  # the fused graph's input: the engine resizes to this
    members: list[MemberSpec]
    cam: CamSpec
    # Full-size conversions need gigabytes each: one process per member keeps the peak at
    # one model. Tiny members share one process to save the framework's start-up.
    process_per_member: bool
    parity_samples: int


def _default() -> Preset:
    order = list(FINDINGS)
    size = (224, 224)
    return Preset(
        name="default",
        input_size=size,
        members=[
            MemberSpec("xception", "Xception", size, TF_MODE, order),
            MemberSpec("inception_resnet_v2", "InceptionResNetV2", size, TF_MODE, order),
            MemberSpec("densenet121", "DenseNet121", size, UNIT_MODE, order),
            MemberSpec("densenet169", "DenseNet169", size, UNIT_MODE, CHEXPERT_ORDER),
            MemberSpec("densenet201", "DenseNet201", size, UNIT_MODE, CHEXPERT_ORDER),
        ],
        cam=CamSpec(
            name="cam_densenet121",
            architecture="DenseNet121",
            input_size=size,
            preprocess=IMAGENET_MODE,
            growth_rate=32,
            block_config=(6, 12, 24, 16),
            num_init_features=64,
            bn_size=4,
            classes=CHESTXRAY14,
            class_map=CAM_CLASS_MAP,
        ),
        process_per_member=True,
        parity_samples=2,
    )


def _tiny() -> Preset:
    """Same interface as `default`, small enough to build in seconds (tests, CI).

    One member is trained at a smaller size than the fused input, so the in-graph resize
    is exercised, and two emit the CheXpert order, so the re-mapping is too.
    """
    order = list(FINDINGS)
    size = (128, 128)
    return Preset(
        name="tiny",
        input_size=size,
        members=[
            MemberSpec("xception", "tiny-cnn", size, TF_MODE, order, [8, 16, 16]),
            MemberSpec("inception_resnet_v2", "tiny-cnn", (96, 96), TF_MODE, order, [8, 8, 16]),
            MemberSpec("densenet121", "tiny-cnn", size, UNIT_MODE, order, [4, 8, 16]),
            MemberSpec("densenet169", "tiny-cnn", size, UNIT_MODE, CHEXPERT_ORDER, [8, 16, 8]),
            MemberSpec("densenet201", "tiny-cnn", size, UNIT_MODE, CHEXPERT_ORDER, [4, 4, 8]),
        ],
        cam=CamSpec(
            name="cam_densenet121",
            architecture="DenseNet-tiny",
            input_size=size,
            preprocess=IMAGENET_MODE,
            growth_rate=4,
            block_config=(2, 2, 2, 2),
            num_init_features=8,
            bn_size=2,
            classes=CHESTXRAY14,
            class_map=CAM_CLASS_MAP,
        ),
        process_per_member=False,
        parity_samples=4,
    )


PRESETS = {"default": _default, "tiny": _tiny}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
