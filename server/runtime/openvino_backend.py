"""The OpenVINO backend: the repository's fp32 ONNX graph compiled for this CPU, in fp32 or
with bf16 inference precision where the CPU computes bf16 natively (about twice the fp32
throughput on AVX512-BF16 / AMX cores); or its int8 graph (QuantizeLinear/DequantizeLinear
pairs around the convolutions and matrix products), which OpenVINO runs in int8 kernels
(VNNI) with the unquantised rest in fp32. The compiled model is cached under
<data_dir>/openvino-cache (OpenVINO keys it by model, settings, device and its version), so
later starts skip compilation."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from server.runtime.manifest import GraphFile

if TYPE_CHECKING:
    from server.runtime.backends import Choice
    from server.settings import Settings

log = logging.getLogger("chexray.runtime")

# int8: the quantised operations run in int8 whatever the hint; f32 keeps the rest in fp32
# (a bf16 rest measured no faster at batch 4 and slower at batch 1 on Zen 4).
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class OpenVinoBackend:
    def __init__(
        self, choice: Choice, path: Path, graph: GraphFile, outputs: list[str], config: Settings
    ) -> None:
        import openvino as ov

        self.choice = choice
        self.provider = "OpenVINO CPU"
        core = ov.Core()
        cache = config.data_dir / "openvino-cache"
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
        properties = {
            "INFERENCE_PRECISION_HINT": HINTS[choice.precision],
            # One stream: the dynamic batcher forms the batches and one engine instance runs
            # one batch at a time, so every core works on it (lowest latency per batch).
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
        }
        if config.intra_op_threads > 0:
            properties["INFERENCE_NUM_THREADS"] = str(config.intra_op_threads)
        t = time.perf_counter()
        self.compiled = core.compile_model(str(path), "CPU", properties)
        self._request = self.compiled.create_infer_request()
        self._outputs = [(name, self.compiled.output(name)) for name in outputs]
        log.info(
            "loaded %s on OpenVINO CPU (%s inference precision) in %.1f s",
            graph.file,
            choice.precision,
            time.perf_counter() - t,
        )

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        results = self._request.infer({0: batch})
        # Copies: the request reuses its output buffers for the next batch, while callers
        # still hold rows of this one.
        return {name: np.array(results[port], np.float32) for name, port in self._outputs}
