"""The fused graph's contract: what `convert` builds, the engine runs, `calibrate` re-weights
and the benchmarks time. One place, so that a name or a tolerance cannot drift apart.

    input   image                 uint8   [batch, H, W]        (grey, model resolution)
    outputs probabilities         float32 [batch, 5]            (FINDINGS order)
            member_probabilities  float32 [batch, members, 5]
            cam_probabilities     float32 [batch, 5]
            cam_maps              float32 [batch, 5, h, w]
    initializer ensemble_weights  float32 [1, members, 5]       (normalised per finding)
"""

from __future__ import annotations

from server.runtime.manifest import FINDINGS, Manifest, RepositoryError, TensorSpec

INPUT = "image"
INPUT_DTYPE = "uint8"
PROBABILITIES = "probabilities"
MEMBER_PROBABILITIES = "member_probabilities"
CAM_PROBABILITIES = "cam_probabilities"
CAM_MAPS = "cam_maps"
OUTPUTS: tuple[str, ...] = (PROBABILITIES, MEMBER_PROBABILITIES, CAM_PROBABILITIES, CAM_MAPS)
OUTPUT_DTYPE = "float32"

# The per-disease weights live in the fused graph as this one initializer, so a new
# weighting is a new copy of the graph with this tensor replaced, not a new conversion.
WEIGHTS_INITIALIZER = "ensemble_weights"

# Largest absolute probability difference accepted between two implementations.
MEMBER_TOLERANCE = 1e-5  # an exported network vs its source framework (Keras, torch)
FUSED_TOLERANCE = 1e-5  # the fused graph vs its networks run separately; a re-weighting
FP16_TOLERANCE = 1e-2  # a float16 graph vs its float32 original
# A served precision (bf16, fp16, int8; OpenVINO fp32) vs onnxruntime fp32 on the check set;
# present/absent calls must agree except where fp32 lies within CALL_MARGIN of a threshold.
PRECISION_TOLERANCE = 1e-2
CALL_MARGIN = 1e-2
# int8 checked on the user's labelled set instead: largest AUC drop vs fp32, per finding.
INT8_AUC_DROP = 0.005


def input_spec(height: int, width: int) -> TensorSpec:
    return TensorSpec(INPUT, INPUT_DTYPE, ["batch", height, width])


def output_specs(members: int, feature_map: tuple[int, int]) -> list[TensorSpec]:
    fh, fw = feature_map
    n = len(FINDINGS)
    return [
        TensorSpec(PROBABILITIES, OUTPUT_DTYPE, ["batch", n]),
        TensorSpec(MEMBER_PROBABILITIES, OUTPUT_DTYPE, ["batch", members, n]),
        TensorSpec(CAM_PROBABILITIES, OUTPUT_DTYPE, ["batch", n]),
        TensorSpec(CAM_MAPS, OUTPUT_DTYPE, ["batch", n, fh, fw]),
    ]


def check_contract(manifest: Manifest) -> tuple[int, int]:
    """The model input's (height, width), once the manifest's tensors are the ones this
    server knows; RepositoryError naming what differs otherwise."""
    problems = []
    spec = manifest.input
    if spec.name != INPUT or spec.dtype != INPUT_DTYPE or len(spec.shape) != 3:
        problems.append(
            f"input is {spec.name} {spec.dtype}{spec.shape}, expected {INPUT} "
            f"{INPUT_DTYPE}[batch, height, width]"
        )
    names = [o.name for o in manifest.outputs]
    if names != list(OUTPUTS):
        problems.append(f"outputs are {names}, expected {list(OUTPUTS)}")
    elif any(o.dtype != OUTPUT_DTYPE for o in manifest.outputs):
        problems.append(f"outputs must be {OUTPUT_DTYPE}")
    if problems:
        raise RepositoryError(
            f"model repository {manifest.version}: its fused graph's contract is not one this "
            "server knows (" + "; ".join(problems) + "): rebuild it with `chexray convert` "
            "or upgrade the server"
        )
    h, w = spec.shape[1:]
    if not isinstance(h, int) or not isinstance(w, int):
        raise RepositoryError(f"model repository {manifest.version}: input size {spec.shape}")
    return h, w
