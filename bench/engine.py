"""Engine limit: the fused graph alone (no HTTP, no batcher), per backend x precision x batch.

    python bench/engine.py [--repo models_onnx] [--batch-sizes 1,2,4,8] [--threads 2]
                           [--configs reference,onnxruntime-cpu-fp32,openvino-cpu-bf16]

The configurations are measured interleaved (each batch size in turn for every one), so a
noisy machine slows them alike. `reference` is onnxruntime fp32 with onnxruntime's own
default session settings: the line every ratio of the report is taken against. The others
are CheXray's backends with CheXray's settings, by their choice label; by default every one
this machine can run. An OpenVINO label with `-whole` runs the graph whole on every thread
instead of its networks in parts side by side (CHEXRAY_OPENVINO_PARTS=1).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.reference import random_images
from server.runtime.backends import REFERENCE, Machine, open_backend
from server.runtime.contract import INPUT
from server.runtime.manifest import Manifest, load_manifest
from server.runtime.openvino_backend import parts_for
from server.runtime.precision import runnable
from server.settings import Settings

Run = Callable[[np.ndarray], object]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ort_defaults(manifest: Manifest, repo: Path, threads: int) -> Run:
    """onnxruntime fp32 as a general-purpose server runs it: default session options."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(repo / manifest.fused.file), options, providers=["CPUExecutionProvider"]
    )
    return lambda images: session.run(None, {INPUT: images})


def configurations(
    manifest: Manifest, repo: Path, threads: int, names: list[str] | None, data_dir: Path
) -> dict[str, Callable[[], Run]]:
    settings = Settings(model_dir=repo, data_dir=data_dir, intra_op_threads=threads)
    whole = msgspec.structs.replace(settings, openvino_parts=1)
    choices = [REFERENCE, *runnable(manifest, Machine.here())]
    found: dict[str, Callable[[], Run]] = {
        "reference": lambda: ort_defaults(manifest, repo, threads)
    }
    for c in choices:
        found[c.label] = lambda c=c: open_backend(c, manifest, repo, settings).run
        # The same graph run whole on every thread: what running it in parts gains.
        if c.backend == "openvino" and parts_for(settings.openvino_parts, threads) > 1:
            found[f"{c.label}-whole"] = lambda c=c: open_backend(c, manifest, repo, whole).run
    if names is None:
        return found
    unknown = [n for n in names if n not in found]
    if unknown:
        raise SystemExit(f"unknown or unavailable configuration(s) {unknown}; here: {list(found)}")
    return {n: found[n] for n in names}


def measure(run: Run, images: np.ndarray, min_seconds: float, min_runs: int) -> list[float]:
    run(images)  # warm-up: allocations, kernel choice
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - t)
    return times


def row(name: str, n: int, times: list[float]) -> dict:
    med = statistics.median(times)
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else med
    return {
        "config": name,
        "batch": n,
        "median_ms": med * 1e3,
        "p90_ms": p90 * 1e3,
        "ms_per_image": med * 1e3 / n,
        "images_per_s": n / med,
        "runs": len(times),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=Path("models_onnx"))
    p.add_argument("--batch-sizes", default="1,2,4,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", help="comma-separated; default: every one available here")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum time per measurement")
    p.add_argument("--runs", type=int, default=3, help="minimum runs per measurement")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    manifest = load_manifest(args.repo)
    h, w = (int(d) for d in manifest.input.shape[1:])
    names = args.configs.split(",") if args.configs else None
    with tempfile.TemporaryDirectory(prefix="chexray-engine-bench-") as tmp:
        runs: dict[str, Run] = {}
        loads: dict[str, float] = {}
        for name, make in configurations(
            manifest, args.repo, args.threads, names, Path(tmp)
        ).items():
            t = time.perf_counter()
            runs[name] = make()
            loads[name] = time.perf_counter() - t
        print(
            f"fused graph {manifest.version} ({manifest.preset}), {h}x{w}, {args.threads} "
            f"threads; {cpu_model()}; loaded "
            + ", ".join(f"{n} in {s:.1f} s" for n, s in loads.items())
        )
        print(
            f"{'config':<26}{'batch':>5} {'median ms':>10} {'p90 ms':>9} {'ms/image':>9} "
            f"{'images/s':>9} {'runs':>5}",
            flush=True,
        )
        rows = []
        for n in (int(b) for b in args.batch_sizes.split(",")):
            images = random_images(n, h, w, seed=n)
            for name, run in runs.items():
                r = row(name, n, measure(run, images, args.seconds, args.runs))
                rows.append(r)
                print(
                    f"{name:<26}{n:>5} {r['median_ms']:>10.1f} {r['p90_ms']:>9.1f} "
                    f"{r['ms_per_image']:>9.1f} {r['images_per_s']:>9.2f} {r['runs']:>5}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "version": manifest.version,
                    "preset": manifest.preset,
                    "threads": args.threads,
                    "load_s": loads,
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0


class Checkpoint:
    """The engine limits a report's ratios use, measured again in this process between the
    server's load levels (the server idle meanwhile): the reference at batch 1 and at its
    best batch, and the served backend at its best batch (the batches from `rows`, the
    full table). On shared cores a machine's speed drifts within minutes; a level is then
    set against the engine as it ran just before and just after it."""

    def __init__(self, repo: Path, threads: int, rows: list[dict], seconds: float = 2.0) -> None:
        self.repo, self.threads, self.rows, self.seconds = repo, threads, rows, seconds
        self.manifest = load_manifest(repo)
        self._tmp = tempfile.TemporaryDirectory(prefix="chexray-engine-check-")
        self._runs: dict[str, Run] = {}

    def _run(self, config: str) -> Run:
        if config not in self._runs:
            make = configurations(
                self.manifest, self.repo, self.threads, [config], Path(self._tmp.name)
            )
            self._runs[config] = make[config]()
        return self._runs[config]

    def __call__(self, backend: str) -> dict:
        h, w = (int(d) for d in self.manifest.input.shape[1:])
        plan = [
            ("own", backend, best(self.rows, backend)["batch"]),
            ("reference", "reference", best(self.rows, "reference")["batch"]),
            ("reference_batch_1", "reference", 1),
        ]
        out: dict[str, dict] = {}
        for key, config, n in plan:
            images = random_images(n, h, w, seed=n)
            out[key] = row(config, n, measure(self._run(config), images, self.seconds, 2))
        return out

    def close(self) -> None:
        self._runs.clear()
        self._tmp.cleanup()


def best(rows: list[dict], config: str) -> dict:
    """The configuration's row with the most images/s (its engine limit)."""
    return max((r for r in rows if r["config"] == config), key=lambda r: r["images_per_s"])


def at_batch(rows: list[dict], config: str, batch: int) -> dict:
    return next(r for r in rows if r["config"] == config and r["batch"] == batch)


if __name__ == "__main__":
    sys.exit(main())
