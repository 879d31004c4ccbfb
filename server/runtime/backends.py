"""The seam between the engine and what runs the fused graph.

A backend runs one prepared batch (uint8 [N, H, W]) and returns the contract's outputs as
float32 arrays. Two exist: onnxruntime (CUDA or CPU, fp32/fp16/int8 graphs) and OpenVINO
(CPU: fp32 or bf16 from the same fp32 ONNX file; int8 from the repository's quantised
QDQ graph). `choose` turns the settings and what this machine has into one (backend,
device, precision); `open_backend` builds it.

    auto: CUDA fp16 where onnxruntime has a CUDA provider; else OpenVINO bf16 where the CPU
          computes bf16 natively (AVX512-BF16 or AMX); else OpenVINO fp32 where installed
          (faster than onnxruntime fp32 on the CPUs measured), else onnxruntime fp32.
    int8 is never chosen by auto: it is served only when CHEXRAY_PRECISION=int8 asks for
          it, by OpenVINO where installed (it runs the QDQ graph in int8 kernels: 2.7x
          onnxruntime fp32 at batch 4 on Zen 4, where onnxruntime's own int8 kernels gain
          little over its fp32), else by onnxruntime on the CPU.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from server.runtime.manifest import GraphFile, Manifest, RepositoryError

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger("chexray.runtime")

BackendName = Literal["onnxruntime", "openvino"]
Precision = Literal["fp32", "fp16", "bf16", "int8"]
Device = Literal["cpu", "cuda"]


class Backend(Protocol):
    choice: Choice
    provider: str  # what runs it, in the runtime's words: CUDAExecutionProvider, OpenVINO CPU

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One batch through the fused graph; outputs by the manifest's names."""
        ...


@dataclass(frozen=True)
class Choice:
    backend: BackendName
    device: Device
    precision: Precision

    @property
    def label(self) -> str:
        """Like `openvino-cpu-bf16`: the key of its precision check in the manifest."""
        return f"{self.backend}-{self.device}-{self.precision}"

    @property
    def is_reference(self) -> bool:
        """onnxruntime fp32 on the CPU is what every other choice is checked against."""
        return self == REFERENCE


REFERENCE = Choice("onnxruntime", "cpu", "fp32")


class ChoiceError(RuntimeError):
    """The settings ask for a combination this machine or repository cannot serve."""


# -- what this machine has ----------------------------------------------------------------


@cache
def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@cache
def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@cache
def native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (OpenVINO then lists BF16)."""
    if not openvino_installed():
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@dataclass(frozen=True)
class Machine:
    cuda: bool
    openvino: bool
    bf16: bool

    @classmethod
    def here(cls, provider: str = "auto") -> Machine:
        cuda = provider != "cpu" and cuda_available()
        return cls(cuda=cuda, openvino=openvino_installed(), bf16=native_bf16())


def choose(settings: Settings, manifest: Manifest, machine: Machine | None = None) -> Choice:
    """The backend, device and precision to serve with; ChoiceError says why not."""
    m = machine or Machine.here(settings.provider)
    backend, precision = settings.backend, settings.precision
    if settings.provider == "cuda" and not m.cuda:
        raise ChoiceError(
            "CHEXRAY_PROVIDER=cuda asked for, but onnxruntime has no CUDA provider: install "
            "the gpu extra (onnxruntime-gpu) and check the CUDA/cuDNN libraries"
        )
    if backend == "auto":
        if m.cuda and precision in ("auto", "fp32", "fp16"):
            backend = "onnxruntime"
        elif m.openvino and precision in ("auto", "fp32", "bf16", "int8"):
            backend = "openvino"
        else:
            backend = "onnxruntime"
    if backend == "openvino":
        if not m.openvino:
            raise ChoiceError(
                "CHEXRAY_BACKEND=openvino, but the openvino package is not installed: "
                "pip install -e '.[cpu]'"
            )
        if precision == "auto":
            precision = "bf16" if m.bf16 else "fp32"
        if precision not in ("fp32", "bf16", "int8"):
            raise ChoiceError(
                f"OpenVINO serves fp32, bf16 or int8 on the CPU, not {precision}: use "
                "CHEXRAY_BACKEND=onnxruntime for fp16 (CUDA)"
            )
        if precision == "bf16" and not m.bf16:
            raise ChoiceError(
                "CHEXRAY_PRECISION=bf16, but this CPU has no native bf16 (AVX512-BF16 or "
                "AMX): emulated bf16 is slower than fp32; use fp32"
            )
        choice = Choice("openvino", "cpu", precision)
        graph_for(manifest, choice)  # refuses int8 when the repository has no int8 graph
        return choice
    # onnxruntime's int8 kernels are CPU kernels: a QDQ graph on the CUDA provider would
    # run mostly on the CPU anyway.
    device: Device = "cuda" if m.cuda and precision != "int8" else "cpu"
    if precision == "auto":
        precision = "fp16" if m.cuda and manifest.fused_fp16 is not None else "fp32"
    if precision == "bf16":
        raise ChoiceError("bf16 is served by OpenVINO: set CHEXRAY_BACKEND=openvino (or auto)")
    if precision == "fp16" and device != "cuda":
        raise ChoiceError(
            "fp16 is for CUDA (onnxruntime's CPU kernels are slower in fp16 than fp32); on a "
            "CPU use bf16 (OpenVINO) or fp32"
        )
    choice = Choice("onnxruntime", device, precision)
    graph_for(manifest, choice)  # refuses a precision the repository has no graph for
    return choice


def expects_gpu(settings: Settings, machine: Machine | None = None) -> bool:
    """Whether `choose` puts the engine on a GPU under these settings, before a repository
    is read: what sizes the side pools that exist before any model loads."""
    m = machine or Machine.here(settings.provider)
    gpu_precision = settings.precision in ("auto", "fp32", "fp16")
    return m.cuda and settings.backend != "openvino" and gpu_precision


def graph_for(manifest: Manifest, choice: Choice) -> GraphFile:
    """The repository's graph file a choice runs (OpenVINO lowers fp32 to bf16 itself)."""
    if choice.precision == "fp16":
        graph = manifest.fused_fp16
    elif choice.precision == "int8":
        graph = manifest.fused_int8
    else:
        graph = manifest.fused
    if graph is None:
        hint = (
            "`chexray convert --int8-calibration DIR` builds it"
            if choice.precision == "int8"
            else "rebuild it with `chexray convert`"
        )
        raise RepositoryError(f"the model repository has no {choice.precision} graph: {hint}")
    return graph


def open_backend(choice: Choice, manifest: Manifest, directory: Path, settings: Settings):
    """A ready-to-run backend for `choice` (one per engine instance)."""
    graph = graph_for(manifest, choice)
    outputs = [o.name for o in manifest.outputs]
    if choice.backend == "openvino":
        from server.runtime.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(choice, Path(directory) / graph.file, graph, outputs, settings)
    from server.runtime.session import OnnxRuntimeBackend

    return OnnxRuntimeBackend(choice, Path(directory), graph, manifest, outputs, settings)
