"""The OpenVINO backend: the repository's fp32 ONNX graph compiled for this CPU, in fp32 or
with bf16 inference precision where the CPU computes bf16 natively (about twice the fp32
throughput on AVX512-BF16 / AMX cores); or its int8 graph (QuantizeLinear/DequantizeLinear
pairs around the convolutions and matrix products), which OpenVINO runs in int8 kernels
(VNNI) with the unquantised rest in fp32.

Where there are two threads or more, the graph's networks run in parts side by side, each
part on its share of the threads (server/runtime/branches.py); a graph that cannot be split
runs whole on every thread. A whole graph is compiled from its file and cached under
<data_dir>/openvino-cache (OpenVINO keys it by model, settings, device and its version), so
later starts skip compilation; parts are compiled from the graph in memory (about a
second on 2 cores)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
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


def available_threads(
    cpus: set[int] | None = None, topology: Path = Path("/sys/devices/system/cpu")
) -> int:
    """The physical cores among the CPUs this process may run on (a container's cpuset
    included): one thread per core, as OpenVINO itself counts, since a core's second
    hardware thread adds little to these kernels. The CPUs themselves where the topology
    cannot be read."""
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            where = topology / f"cpu{cpu}" / "topology"
            package = (where / "physical_package_id").read_text().strip()
            cores.add((package, (where / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or 1


def parts_for(setting: int, threads: int) -> int:
    """How many parts to run side by side: the setting, or 2 where there are 2 threads (one
    per core) or more."""
    if setting > 0:
        return min(setting, threads)
    return 2 if threads >= 2 else 1


def thread_shares(threads: int, parts: int) -> list[int]:
    """The threads split as evenly as they go, the first parts taking what is left over."""
    return [threads // parts + (1 if i < threads % parts else 0) for i in range(parts)]


def _return_freed_memory() -> None:
    """Give the heap's freed pages back to the system (glibc keeps them otherwise)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class OpenVinoBackend:
    def __init__(
        self, choice: Choice, path: Path, graph: GraphFile, outputs: list[str], config: Settings
    ) -> None:
        import openvino as ov

        from server.runtime import branches

        self.choice = choice
        self.provider = "OpenVINO CPU"
        self._outputs = outputs
        core = ov.Core()
        cache = config.data_dir / "openvino-cache"
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
        # One stream per compiled graph: the dynamic batcher forms the batches and one
        # engine instance runs one batch at a time.
        properties: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": HINTS[choice.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
        }
        threads = config.intra_op_threads or available_threads()
        parts = parts_for(config.openvino_parts, threads)
        t = time.perf_counter()
        self.plan: branches.Plan | None = None
        if parts > 1:
            model = core.read_model(str(path))
            try:
                self.plan = branches.plan(model, parts)
            except branches.NotSplit as exc:
                log.info("%s runs whole on %d threads: %s", graph.file, threads, exc)
        if self.plan is None:
            if config.intra_op_threads > 0:
                properties["INFERENCE_NUM_THREADS"] = str(config.intra_op_threads)
            compiled = [core.compile_model(str(path), "CPU", properties)]
            layout = f"whole on {threads} threads"
        else:
            # Each part on threads of its own, free to move between cores: pinned, both
            # parts' threads would start on the same cores.
            compiled = [
                core.compile_model(
                    part,
                    "CPU",
                    {**properties, "INFERENCE_NUM_THREADS": str(n), "ENABLE_CPU_PINNING": False},
                )
                for part, n in zip(
                    branches.submodels(model, self.plan), thread_shares(threads, parts), strict=True
                )
            ]
            layout = f"in {parts} parts side by side ({threads} threads)"
        if parts > 1:  # split or not, the fp32 graph read to plan it: about 150 MB
            del model
            _return_freed_memory()
        self._requests = [c.create_infer_request() for c in compiled]
        # What each request returns: the contract's outputs whole, or each part's tensors.
        names = [outputs] if self.plan is None else [list(p) for p in self.plan.parts]
        self._ports = [
            [(name, c.output(name)) for name in part]
            for c, part in zip(compiled, names, strict=True)
        ]
        log.info(
            "loaded %s on OpenVINO CPU (%s inference precision), %s, in %.1f s",
            graph.file,
            choice.precision,
            layout,
            time.perf_counter() - t,
        )

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.plan is None:
            results = self._requests[0].infer({0: batch})
            # Copies: the request reuses its output buffers for the next batch, while
            # callers still hold rows of this one.
            return {name: np.array(results[port], np.float32) for name, port in self._ports[0]}
        for request in self._requests:
            request.start_async({0: batch})
        failure: Exception | None = None
        for request in self._requests:  # every part waited for, so none is still running
            try:
                request.wait()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        heads = {
            name: np.array(request.get_tensor(port).data, np.float32)
            for request, ports in zip(self._requests, self._ports, strict=True)
            for name, port in ports
        }
        return self.plan.combine(heads)
