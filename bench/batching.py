"""The engine with its batcher under concurrent callers (no HTTP): decode, resize, batch,
run. Compares onnxruntime's thread spin-waiting off and on, the event loop and decoding
competing for the same cores as they do in the server.

    python bench/batching.py [--repo models_onnx] [--concurrency 1,8] [--requests 24]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.images import xray_png
from server.runtime.engine import Engine
from server.settings import Settings


async def level(engine: Engine, uploads: list[bytes], concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
    batches: list[int] = []
    queue = list(range(requests))

    async def user() -> None:
        while queue:
            i = queue.pop()
            t = time.perf_counter()
            p = await engine.predict(uploads[i % len(uploads)])
            latencies.append(time.perf_counter() - t)
            batches.append(p.timings.batch_size)

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20)
    return {
        "concurrency": concurrency,
        "images_per_s": requests / wall,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p95_ms": q[-1] * 1e3,
        "mean_batch": sum(batches) / len(batches),
    }


async def run(args: argparse.Namespace, spinning: bool) -> list[dict]:
    settings = Settings(
        model_dir=args.repo,
        intra_op_threads=args.threads,
        allow_spinning=spinning,
        max_batch=args.max_batch,
        warmup_batch_sizes=(1, args.max_batch),
    )
    engine = Engine(settings)
    await engine.start()
    uploads = [xray_png(i, args.image_size) for i in range(8)]
    try:
        return [await level(engine, uploads, c, args.requests) for c in args.concurrency]
    finally:
        await engine.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=Path("models_onnx"))
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=1024)
    args = p.parse_args()
    print(f"{'spinning':>8} {'users':>5} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'batch':>6}")
    for spinning in (False, True):
        for r in asyncio.run(run(args, spinning)):
            print(
                f"{'on' if spinning else 'off':>8} {r['concurrency']:>5} {r['images_per_s']:>9.2f} "
                f"{r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} {r['mean_batch']:>6.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
