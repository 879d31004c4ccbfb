"""The model repository's manifest: the one contract between `convert` and `server`.

`convert` writes it, the engine reads it. Every field is validated by msgspec on load, so
a hand-edited or truncated manifest fails with a message that names the field.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import msgspec

from server.runtime.findings import FINDINGS

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class Preprocess(msgspec.Struct, frozen=True):
    """How a network wants its pixels: `(x - mean) / std` per channel, x in 0..255.

    `mode` names the convention it came from ("tf": Keras preprocess_input to [-1, 1];
    "unit": x / 255; "imagenet": torchvision mean/std). mean and std are in the
    network's channel order; grey X-rays are replicated to `channels` identical planes.
    """

    mode: str
    mean: list[float]
    std: list[float]
    channels: int = 3
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    resize: Literal["squash"] = "squash"


class Parity(msgspec.Struct, frozen=True):
    """Largest absolute difference between two implementations on random inputs."""

    max_abs_diff: float
    tolerance: float
    against: str
    samples: int


class Member(msgspec.Struct, frozen=True):
    name: str
    architecture: str
    input_size: tuple[int, int]  # (height, width) the network was trained at
    file: str  # relative to the repository
    sha256: str
    source: str | None  # the weights file it was converted from; None = random init
    trained: bool
    loader: str  # "keras3", "tf_keras" (legacy Keras 2) or "random"
    preprocess: Preprocess
    output_order: list[str]  # findings in the order the network emits them
    parity: Parity
    build_key: str  # hash of everything that went into the file (for idempotent rebuilds)


class CamNetwork(msgspec.Struct, frozen=True):
    name: str
    architecture: str
    input_size: tuple[int, int]
    file: str
    sha256: str
    source: str | None
    trained: bool
    preprocess: Preprocess
    classes: list[str]  # the network's own classes (ChestX-ray14 for CheXNet)
    class_map: dict[str, int]  # our finding -> index into `classes`
    feature_map: tuple[int, int, int]  # (channels, height, width) of the last feature map
    parity: Parity
    build_key: str


class Thresholds(msgspec.Struct, frozen=True):
    values: list[float]  # per finding, in FINDINGS order
    source: str


class GraphFile(msgspec.Struct, frozen=True):
    file: str
    sha256: str
    dtype: Literal["float32", "float16", "int8"]
    parity: Parity
    size_bytes: int
    build_key: str


class PrecisionCheck(msgspec.Struct, frozen=True):
    """One backend and precision compared with onnxruntime fp32 on a fixed check set.

    Passed: every probability within `tolerance`, and every present/absent call the same
    except where fp32's probability lies within `margin` of the threshold."""

    label: str  # backend-device-precision, e.g. openvino-cpu-bf16
    created: str
    machine: str  # the CPU (or GPU) it was measured on
    check_set: str  # what the images were
    images: int
    max_abs_diff: list[float]  # per finding, FINDINGS order
    calls_differ: int  # image x finding pairs whose call differs from fp32's
    calls_differ_outside_margin: int  # ... where fp32 is farther than `margin` from it
    tolerance: float
    margin: float
    passed: bool
    seconds_per_image: float  # at the check's batch size: a rough speed, for the record
    # Gated on a labelled set instead (int8 with `--int8-labelled`): per finding, fp32's AUC
    # minus this choice's (None where the set lacks positives or negatives), the set, and
    # the largest drop accepted; `passed` then says every drop is within `auc_limit`.
    auc_drop: list[float | None] | None = None
    auc_set: str | None = None
    auc_limit: float | None = None


class TensorSpec(msgspec.Struct, frozen=True):
    name: str
    dtype: str
    shape: list[int | str]


class FoldAUC(msgspec.Struct, frozen=True):
    """Held-out AUC of one weighting of the ensemble, mean and sd over the CV folds."""

    mean: float
    sd: float


class FindingCalibration(msgspec.Struct, frozen=True):
    finding: str
    positives: int
    negatives: int
    fitted: FoldAUC  # weights fitted on the other folds
    previous: FoldAUC  # the weights served before this calibration
    # The legacy application's hand-set matrix; "seed" in the JSON, as manifests have it.
    legacy: FoldAUC = msgspec.field(name="seed")
    equal: FoldAUC
    # The weighting served: "fitted", "legacy" ("seed" in manifests written before it was
    # renamed), "equal", "previous", or why the previous weights were kept.
    weights_from: str

    @property
    def served(self) -> FoldAUC:
        """The held-out AUC of the weighting this calibration served."""
        name = "legacy" if self.weights_from == "seed" else self.weights_from
        return getattr(self, name) if name in ("fitted", "legacy", "equal") else self.previous


class Calibration(msgspec.Struct, frozen=True):
    """Where the served thresholds and weights came from, when `chexray calibrate` set them."""

    created: str
    data: str  # the labelled CSV
    images: int
    label_policy: dict[str, str]
    method: str
    folds: int
    previous_version: str
    findings: list[FindingCalibration]
    # Per finding, the served probabilities of the labelled set as a quantile sketch (values
    # at levels (i + 0.5) / 100): the reference of `chexray drift`. Absent from manifests
    # calibrated before it was kept.
    score_quantiles: dict[str, list[float]] | None = None


class Manifest(msgspec.Struct, frozen=True):
    schema_version: int
    preset: str
    version: str  # content hash: changes whenever anything served changes
    created: str
    findings: list[str]
    input: TensorSpec
    outputs: list[TensorSpec]
    members: list[Member]
    weights: list[list[float]]  # members x findings, as given
    weights_normalised: list[list[float]]  # each finding's column sums to 1
    thresholds: Thresholds
    cam: CamNetwork
    fused: GraphFile
    fused_fp16: GraphFile | None
    opset: int
    versions: dict[str, str]
    calibration: Calibration | None = None
    fused_int8: GraphFile | None = None  # opt-in: `chexray convert --int8-calibration DIR`
    precision_checks: dict[str, PrecisionCheck] = {}  # by PrecisionCheck.label

    @property
    def trained(self) -> bool:
        """True only when every network carries trained weights."""
        return all(m.trained for m in self.members) and self.cam.trained


class RepositoryError(Exception):
    """The model repository is missing, incomplete or corrupted."""


def normalise_weights(weights: list[list[float]]) -> list[list[float]]:
    """Scale each finding's column of a members x findings matrix to sum to 1."""
    if not weights or any(len(row) != len(FINDINGS) for row in weights):
        raise ValueError(
            f"weights must be a members x {len(FINDINGS)} matrix, got "
            f"{[len(row) for row in weights]}"
        )
    if any(w < 0 for row in weights for w in row):
        raise ValueError("weights must be non-negative")
    out = [list(map(float, row)) for row in weights]
    for d, finding in enumerate(FINDINGS):
        total = sum(row[d] for row in weights)
        if total <= 0:
            raise ValueError(f"weights for {finding} sum to 0: at least one member must vote")
        for row in out:
            row[d] = row[d] / total
    return out


def model_version(
    preset: str,
    fused: GraphFile,
    fused_fp16: GraphFile | None,
    thresholds: Thresholds,
    class_map: dict[str, int],
) -> str:
    """The served model's version: a hash of everything that changes what users get back."""
    parts = [fused.sha256, fused_fp16 and fused_fp16.sha256, thresholds, class_map]
    return preset + "-" + hashlib.sha256(msgspec.json.encode(parts)).hexdigest()[:12]


def graph_file(
    directory: Path,
    rel: str,
    dtype: Literal["float32", "float16", "int8"],
    parity: Parity,
    build_key: str,
) -> GraphFile:
    """The manifest's entry for a graph file written at `directory / rel`."""
    path = Path(directory) / rel
    return GraphFile(rel, sha256_file(path), dtype, parity, path.stat().st_size, build_key)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def decode_manifest(data: bytes, origin: str = MANIFEST_NAME) -> Manifest:
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.ValidationError as exc:
        raise RepositoryError(f"{origin}: invalid manifest: {exc}") from None
    except msgspec.DecodeError as exc:
        raise RepositoryError(f"{origin}: not valid JSON: {exc}") from None
    if manifest.schema_version != SCHEMA_VERSION:
        raise RepositoryError(
            f"{origin}: schema version {manifest.schema_version}, this server reads "
            f"{SCHEMA_VERSION}: rebuild the repository with `chexray convert`"
        )
    if tuple(manifest.findings) != FINDINGS:
        raise RepositoryError(f"{origin}: findings {manifest.findings} != {list(FINDINGS)}")
    return manifest


def load_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise RepositoryError(
            f"{path}: no manifest: build the model repository with `chexray convert`"
        )
    return decode_manifest(path.read_bytes(), str(path))
