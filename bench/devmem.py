"""Device memory during a benchmark: what the GPU has in use above its idle level, sampled
in a thread, and the GPU's name, driver and CUDA version for the report.

NVML (the nvidia-ml-py package, `import pynvml`) where it loads, else `nvidia-smi` polled
(coarser: every 0.2 s, MiB). The figure is the device's used memory minus what it used
when sampling started, not one process's: per-process figures are often unavailable in
containers (PID namespaces), and the benchmark is alone on the GPU. It includes what no
onnxruntime setting bounds: the CUDA context, cuDNN and cuBLAS handles and workspaces.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from collections.abc import Iterator

MIB = 1024**2


class _Nvml:
    name = "nvml"

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def info(self) -> dict:
        n = self._nvml
        cuda = n.nvmlSystemGetCudaDriverVersion()
        name = n.nvmlDeviceGetName(self._handle)
        return {
            "gpu": name.decode() if isinstance(name, bytes) else name,
            "driver": _text(n.nvmlSystemGetDriverVersion()),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
            "memory_total_mb": n.nvmlDeviceGetMemoryInfo(self._handle).total / MIB,
        }


class _Smi:
    name = "nvidia-smi"

    def __init__(self, index: int) -> None:
        if shutil.which("nvidia-smi") is None:
            raise OSError("nvidia-smi not found")
        self._index = str(index)
        self.used()  # fails here, not in the sampling thread

    def _query(self, fields: str) -> list[str]:
        query = [f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", self._index]
        out = subprocess.run(
            ["nvidia-smi", *query],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return [v.strip() for v in out.strip().splitlines()[0].split(",")]

    def used(self) -> int:
        return int(float(self._query("memory.used")[0]) * MIB)

    def info(self) -> dict:
        name, driver, total = self._query("name,driver_version,memory.total")
        cuda = ""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout
            if "CUDA Version:" in head:
                cuda = head.split("CUDA Version:", 1)[1].split()[0]
        return {"gpu": name, "driver": driver, "cuda_driver": cuda, "memory_total_mb": float(total)}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_reader(index: int = 0) -> _Nvml | _Smi | None:
    """NVML, else nvidia-smi, else None (no NVIDIA GPU or driver here)."""
    for kind in (_Nvml, _Smi):
        try:
            return kind(index)
        except Exception:  # library or tool missing, no driver, no device
            continue
    return None


def gpu_info(index: int = 0) -> dict | None:
    reader = open_reader(index)
    return None if reader is None else {**reader.info(), "memory_reader": reader.name}


class DeviceMemory:
    """Peak device memory above the level when `start` ran, overall and per labelled
    segment (`with sampler.segment("fp16 x2"): ...`). All figures in MB (MiB); None
    everywhere when no reader is available (`measured` is False)."""

    def __init__(self, index: int = 0, interval_s: float = 0.02, enabled: bool = True) -> None:
        self._reader = open_reader(index) if enabled else None
        self._interval = interval_s if isinstance(self._reader, _Nvml) else 0.2
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline: int | None = None
        self.peak: int | None = None
        self.segments: dict[str, int] = {}
        self._current: str | None = None

    @property
    def measured(self) -> bool:
        return self._reader is not None

    @property
    def reader(self) -> str | None:
        return None if self._reader is None else self._reader.name

    def start(self) -> DeviceMemory:
        if self._reader is None:
            return self
        self.baseline = self._reader.used()
        self.peak = 0
        self._thread = threading.Thread(target=self._loop, name="devmem", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        assert self._reader is not None and self.baseline is not None
        above = self._reader.used() - self.baseline
        with self._lock:
            self.peak = max(self.peak or 0, above)
            if self._current is not None:
                self.segments[self._current] = max(self.segments.get(self._current, 0), above)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self._sample()
            self._stop.wait(self._interval)

    @contextlib.contextmanager
    def segment(self, label: str) -> Iterator[None]:
        if self._reader is None:
            yield
            return
        with self._lock:
            self._current = label
            self.segments[label] = 0
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self._sample()  # the last moment of the segment, however short it was
            with self._lock:
                self._current = None

    def stop(self) -> dict:
        """Stop sampling; the figures as a dict for the report."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            with contextlib.suppress(Exception):
                self._sample()
        return self.summary()

    def summary(self) -> dict:
        def mb(v: int | None) -> float | None:
            return None if v is None else v / MIB

        return {
            "measured": self.measured,
            "reader": self.reader,
            "baseline_mb": mb(self.baseline),
            "peak_mb": mb(self.peak),
            "segments_mb": {k: mb(v) for k, v in self.segments.items()},
        }
