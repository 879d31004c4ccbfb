"""Engine limit: the fused graph alone through onnxruntime (no HTTP, no batcher).

    python bench/engine.py [--repo models_onnx] [--batch-sizes 1,2,4,8,16] [--threads 2]

Prints images/s and latency by batch size: the ceiling the server is measured against.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.reference import random_images
from server.runtime.contract import INPUT
from server.runtime.manifest import load_manifest
from server.runtime.session import open_session
from server.settings import Settings


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(session, images, min_seconds: float, min_runs: int) -> list[float]:
    session.run(None, {INPUT: images})  # warm-up: allocations, kernel choice
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        session.run(None, {INPUT: images})
        times.append(time.perf_counter() - t)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=Path("models_onnx"))
    p.add_argument("--batch-sizes", default="1,2,4,8,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--spinning", action="store_true", help="let onnxruntime threads spin")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum time per batch size")
    p.add_argument("--runs", type=int, default=3, help="minimum runs per batch size")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    manifest = load_manifest(args.repo)
    config = Settings(
        provider=args.provider, intra_op_threads=args.threads, allow_spinning=args.spinning
    )
    t = time.perf_counter()
    session = open_session(manifest, args.repo, config)
    load_s = time.perf_counter() - t
    h, w = manifest.input.shape[1:]
    providers = session.get_providers()
    print(
        f"fused graph {manifest.version} ({manifest.preset}), {h}x{w}, on {providers[0]}, "
        f"{args.threads} intra-op threads, spinning {'on' if args.spinning else 'off'}; "
        f"loaded in {load_s:.1f} s; {cpu_model()}"
    )
    print(
        f"{'batch':>5} {'median ms':>10} {'p90 ms':>9} {'ms/image':>9} {'images/s':>9} {'runs':>5}"
    )
    rows = []
    for n in (int(b) for b in args.batch_sizes.split(",")):
        times = measure(session, random_images(n, h, w, seed=n), args.seconds, args.runs)
        med = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else med
        row = {
            "batch": n,
            "median_ms": med * 1e3,
            "p90_ms": p90 * 1e3,
            "ms_per_image": med * 1e3 / n,
            "images_per_s": n / med,
            "runs": len(times),
        }
        rows.append(row)
        print(
            f"{n:>5} {row['median_ms']:>10.1f} {row['p90_ms']:>9.1f} {row['ms_per_image']:>9.1f} "
            f"{row['images_per_s']:>9.2f} {len(times):>5}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "version": manifest.version,
                    "preset": manifest.preset,
                    "provider": providers[0],
                    "threads": args.threads,
                    "spinning": args.spinning,
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
