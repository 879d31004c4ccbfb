"""onnxruntime sessions for the fused graph: CUDA where it exists, the CPU otherwise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from server.runtime.manifest import GraphFile, Manifest

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger("chexray.runtime")


def _cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def open_session(manifest: Manifest, directory: Path, config: Settings):
    """One InferenceSession of the fused graph (fp16 on CUDA when the manifest has it).

    Spin-waiting threads (off by default) burn the cores the event loop and decoding need
    between runs; without the CPU memory arena (off by default) RSS stays lower at no
    measurable cost for this graph."""
    import onnxruntime as ort

    use_cuda = config.provider == "cuda" or (config.provider == "auto" and _cuda_available())
    if config.provider == "cuda" and not _cuda_available():
        raise RuntimeError(
            "CHEXRAY provider 'cuda' asked for, but onnxruntime has no CUDA provider: "
            "install the gpu extra (onnxruntime-gpu) and check the CUDA/cuDNN libraries"
        )
    graph: GraphFile = manifest.fused
    if use_cuda and config.fp16_on_gpu and manifest.fused_fp16 is not None:
        graph = manifest.fused_fp16

    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = config.cpu_mem_arena
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[config.graph_optimization]
    spin = "1" if config.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3

    providers: list = ["CPUExecutionProvider"]
    if use_cuda:
        providers.insert(
            0,
            (
                "CUDAExecutionProvider",
                {
                    "device_id": config.device_id,
                    "gpu_mem_limit": config.gpu_mem_limit,
                    "arena_extend_strategy": config.arena_extend_strategy,
                    "cudnn_conv_algo_search": config.cudnn_conv_algo_search,
                },
            ),
        )
    session = ort.InferenceSession(str(Path(directory) / graph.file), options, providers=providers)
    log.info("loaded %s (%s) on %s", graph.file, graph.dtype, ", ".join(session.get_providers()))
    return session
