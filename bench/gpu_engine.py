"""Engine limit with IO binding: one graph (fp32 or fp16) on one device, by batch size, with
1 and then 2 instances, and the device memory each needed.

    python bench/gpu_engine.py --repo models_onnx --precision fp16 [--device cuda]
                               [--batch-sizes 1,2,4,8,16,32,64] [--outputs cpu|device]

Sessions are opened with the server's own code (server/runtime/session.py: CUDA provider
options, gpu_mem_limit, cuDNN algorithm search), so the limit is the server's graph on the
server's settings, without HTTP, decoding or the batcher.

IO binding: each batch is copied to the device once per measurement (an OrtValue bound as
the input), so a timed run is the graph alone, not the host-to-device copy of the uint8
batch (50 KB an image at 224x224: 3.2 MB at batch 64, a fraction of a millisecond).
Outputs are bound to the CPU by default: the server needs them in host memory
(probabilities and CAM maps, about 1 KB an image) and pays for that copy and the stream
synchronisation it implies on every batch, so the limit includes it; `--outputs device`
leaves them on the GPU instead, for comparison.

Instances: 1 is one session; 2 is two sessions of the same graph, each run in a loop from
its own thread at the same time (the server's CHEXRAY_INSTANCES=2): images/s counts both.
The second session is opened only after the single-instance sizes are measured, so each
peak of device memory belongs to its instance count. A batch size that fails (out of
memory under gpu_mem_limit, say) is recorded with its error and ends that instance count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.devmem import DeviceMemory
from convert.reference import random_images
from server.runtime.backends import Choice, graph_for
from server.runtime.manifest import load_manifest
from server.runtime.session import open_session
from server.settings import Settings

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


class Bound:
    """One session with a batch bound: input on the device, outputs where asked."""

    def __init__(self, session, images: np.ndarray, device: str, device_id: int, outputs: str):
        import onnxruntime as ort

        self.session = session
        self.io = session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(images, device, device_id)
        self.io.bind_ortvalue_input(session.get_inputs()[0].name, value)
        self._keep = value  # the bound input must outlive the binding
        where = device if outputs == "device" else "cpu"
        for o in session.get_outputs():
            self.io.bind_output(o.name, where, device_id if where != "cpu" else 0)

    def run(self) -> None:
        self.session.run_with_iobinding(self.io)  # returns once the outputs are ready


def timed(bound: list[Bound], seconds: float, min_runs: int) -> tuple[list[float], float]:
    """Every binding in a loop from its own thread, started together: (each call's
    seconds, wall seconds from the common start to the last one's end)."""
    for b in bound:  # warm-up: allocation, cuDNN's algorithm choice for this shape
        b.run()
        b.run()
    barrier = threading.Barrier(len(bound) + 1)
    times: list[list[float]] = [[] for _ in bound]
    ends = [0.0] * len(bound)
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        try:
            while len(times[i]) < min_runs or time.perf_counter() - start < seconds:
                t = time.perf_counter()
                bound[i].run()
                times[i].append(time.perf_counter() - t)
        except BaseException as exc:
            errors.append(exc)
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(bound))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [x for ts in times for x in ts], max(ends) - start


def row(label: str, instances: int, n: int, calls: list[float], wall: float) -> dict:
    med = statistics.median(calls)
    p90 = statistics.quantiles(calls, n=10)[-1] if len(calls) >= 2 else med
    images_per_s = n * len(calls) / wall
    return {
        "config": label,
        "instances": instances,
        "batch": n,
        "median_ms": med * 1e3,
        "p90_ms": p90 * 1e3,
        "ms_per_image": 1e3 / images_per_s,
        "images_per_s": images_per_s,
        "runs": len(calls),
    }


def _check_provider(session, device: str) -> None:
    """onnxruntime falls back to the CPU, with a warning only, when the CUDA provider
    cannot load its libraries: a benchmark of that would be a CPU benchmark."""
    first = session.get_providers()[0]
    if device == "cuda" and first != "CUDAExecutionProvider":
        raise RuntimeError(
            f"asked for CUDA, got {first}: onnxruntime-gpu could not load CUDA or cuDNN "
            "(`pip install 'onnxruntime-gpu[cuda,cudnn]'` brings them as wheels)"
        )


def measure_precision(
    repo: Path,
    precision: str,
    device: str = "cuda",
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    seconds: float = 1.0,
    min_runs: int = 3,
    instances: tuple[int, ...] = (1, 2),
    outputs: str = "cpu",
    gpu_mem_limit: int | None = None,
    device_id: int = 0,
    threads: int = 0,
    verbose: bool = True,
) -> dict:
    """Rows for one precision at each instance count; device memory per instance count."""
    repo = Path(repo)
    manifest = load_manifest(repo)
    choice = Choice("onnxruntime", device, precision)  # type: ignore[arg-type]
    graph = graph_for(manifest, choice)
    h, w = (int(d) for d in manifest.input.shape[1:])
    memory = DeviceMemory(device_id, enabled=device == "cuda").start()
    rows: list[dict] = []
    load_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="chexray-gpu-engine-") as tmp:
        overrides: dict = {"model_dir": repo, "data_dir": Path(tmp), "device_id": device_id}
        overrides["intra_op_threads"] = threads
        overrides["provider"] = device
        if gpu_mem_limit is not None:
            overrides["gpu_mem_limit"] = gpu_mem_limit
        settings = Settings(**overrides)
        sessions: list = []
        for count in sorted(instances):
            with memory.segment(f"{count} instance{'s' if count > 1 else ''}"):
                while len(sessions) < count:
                    t = time.perf_counter()
                    sessions.append(open_session(graph, repo, settings, device == "cuda"))
                    load_s.append(time.perf_counter() - t)
                    _check_provider(sessions[-1], device)
                for n in batch_sizes:
                    images = random_images(n, h, w, seed=n)
                    label = choice.label
                    try:
                        bound = [Bound(s, images, device, device_id, outputs) for s in sessions]
                        calls, wall = timed(bound[:count], seconds, min_runs)
                    except Exception as exc:  # e.g. out of memory under gpu_mem_limit
                        message = str(exc).strip().splitlines()[0][:300] if str(exc) else ""
                        rows.append(
                            {
                                "config": label,
                                "instances": count,
                                "batch": n,
                                "error": f"{type(exc).__name__}: {message}",
                            }
                        )
                        if verbose:
                            print(f"  {label} x{count} batch {n}: {rows[-1]['error']}", flush=True)
                        break
                    finally:
                        bound = []
                    r = row(label, count, n, calls, wall)
                    rows.append(r)
                    if verbose:
                        print(
                            f"  {label:<22} x{count} batch {n:>3}: {r['median_ms']:8.2f} ms, "
                            f"{r['images_per_s']:9.1f} images/s ({r['runs']} runs)",
                            flush=True,
                        )
        provider = sessions[0].get_providers()[0] if sessions else None
        del sessions
    return {
        "config": choice.label,
        "precision": precision,
        "graph": graph.file,
        "provider": provider,
        "outputs": outputs,
        "gpu_mem_limit": settings.gpu_mem_limit,
        "load_s": load_s,
        "rows": rows,
        "device_memory": memory.stop(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=Path("models_onnx"))
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp16")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--instances", default="1,2")
    p.add_argument("--outputs", choices=["cpu", "device"], default="cpu")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum time per measurement")
    p.add_argument("--runs", type=int, default=3, help="minimum runs per measurement")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    result = measure_precision(
        args.repo,
        args.precision,
        args.device,
        tuple(int(b) for b in args.batch_sizes.split(",")),
        args.seconds,
        args.runs,
        tuple(int(i) for i in args.instances.split(",")),
        args.outputs,
        gpu_mem_limit=Settings.from_env().gpu_mem_limit,
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
