"""The onnxruntime backend: sessions of the fused graph on CUDA or the CPU."""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from server.runtime.manifest import GraphFile, Manifest

if TYPE_CHECKING:
    from server.runtime.backends import Choice
    from server.settings import Settings

log = logging.getLogger("chexray.runtime")


class OnnxRuntimeBackend:
    """The fused graph in an onnxruntime InferenceSession: CUDA or the CPU."""

    def __init__(
        self,
        choice: Choice,
        directory: Path,
        graph: GraphFile,
        manifest: Manifest,
        outputs: list[str],
        config: Settings,
    ) -> None:
        self.choice = choice
        self._input = manifest.input.name
        self._outputs = outputs
        cache = config.ort_cache_dir if config.optimized_cache else None
        self.session = open_session(graph, directory, config, choice.device == "cuda", cache)
        self.provider: str = self.session.get_providers()[0]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self._outputs, {self._input: batch})
        return dict(zip(self._outputs, values, strict=True))


def open_session(
    graph: GraphFile,
    directory: Path,
    config: Settings,
    use_cuda: bool,
    cache_dir: Path | None = None,
):
    """One InferenceSession of a fused graph file.

    Spin-waiting threads (off by default) burn the cores the event loop and decoding need
    between runs; without the CPU memory arena (off by default) RSS stays lower at no
    measurable cost for this graph."""
    import onnxruntime as ort

    level = config.graph_optimization
    path = Path(directory) / graph.file
    if not use_cuda and cache_dir is not None and level == "all":
        cached = _optimized_copy(path, graph.sha256, cache_dir)
        if cached is not None:  # already optimized for this CPU: load it as it is
            path, level = cached, "disable"
    options = _options(config, level)

    providers: list = ["CPUExecutionProvider"]
    if use_cuda:
        providers.insert(
            0,
            (
                "CUDAExecutionProvider",
                {
                    "device_id": config.device_id,
                    # The limit holds per session: the instances share the budget.
                    "gpu_mem_limit": config.gpu_mem_limit // config.instances,
                    "arena_extend_strategy": config.arena_extend_strategy,
                    "cudnn_conv_algo_search": config.cudnn_conv_algo_search,
                },
            ),
        )
    session = ort.InferenceSession(str(path), options, providers=providers)
    log.info("loaded %s (%s) on %s", graph.file, graph.dtype, ", ".join(session.get_providers()))
    return session


def _options(config: Settings, level: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = config.cpu_mem_arena
    options.enable_mem_pattern = config.mem_pattern
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    spin = "1" if config.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3
    return options


def cpu_signature() -> str:
    """What makes an optimized graph valid on this machine: CPU model and features."""
    model = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()}|{model}|{flags}"


def _optimized_copy(src: Path, sha256: str, cache_dir: Path) -> Path | None:
    """The fused graph after onnxruntime's full optimisation for this CPU, saved once with
    its weights in an external file. Loading that file skips the optimiser (whose copies
    of the weights doubled the resident memory) and maps the weights instead of reading
    them. Keyed by graph, onnxruntime version and CPU; None if it cannot be made."""
    import onnxruntime as ort

    key = hashlib.sha256(f"{sha256}|{ort.__version__}|{cpu_signature()}".encode()).hexdigest()
    folder = Path(cache_dir) / key[:20]
    model = folder / "model.onnx"
    if (folder / "complete").is_file():
        return model
    tmp: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
        # In a child process: the optimiser's peak (several copies of the weights) would
        # otherwise stay in this long-lived process's memory.
        subprocess.run(
            [sys.executable, "-m", "server.runtime.session", str(src), str(tmp / "model.onnx")],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        (tmp / "complete").write_text(f"{src.name} {sha256}\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("saved the CPU-optimized graph in %s", folder)
        return model
    except (OSError, subprocess.SubprocessError) as exc:
        if tmp is not None:  # a half-written graph can be hundreds of megabytes
            shutil.rmtree(tmp, ignore_errors=True)
        detail = getattr(exc, "stderr", "") or exc
        log.warning(
            "cannot cache the optimized graph in %s (%s): optimizing at load", folder, detail
        )
        return None


def save_optimized(src: Path, dest: Path) -> None:
    """Optimize `src` fully for this CPU and save it as `dest` + `model.data` beside it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.optimized_model_filepath = str(dest)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", "model.data"
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    save_optimized(Path(sys.argv[1]), Path(sys.argv[2]))
