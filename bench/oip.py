"""The Open Inference Protocol beside /api/v1/predictions: throughput and latency of
tritonclient over gRPC and over HTTP (binary tensor data) and of the REST API, against one
`chexray serve` this script starts, at 1 and 16 concurrent clients, in one run.

    python bench/oip.py                          # default: the repository at models_onnx
    python bench/oip.py --repo /tmp/tiny --seconds 3 --out /tmp/oip   # a quick check

Each client sends one 1024x1024 PNG per request (16 different ones, in turn) and waits for
the answer (a closed loop); every client of a level runs in one asyncio loop (httpx,
tritonclient.http.aio, tritonclient.grpc.aio). /api/v1 asks `heatmap=none`; the protocol
returns every output (probabilities, member and CAM probabilities, CAM maps, calls), so
both sides compute the same and render nothing. Refusals (503, UNAVAILABLE) are counted
apart and followed by a short pause. Writes bench/results/oip-<machine>-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import cpu_model  # noqa: E402
from bench.images import xray_png  # noqa: E402
from bench.run import batch_totals, free_port, peak_rss_mb, wait_ready  # noqa: E402

PY = sys.executable
MODEL = "chexray"
PROTOCOLS = ("rest-v1", "oip-http", "oip-grpc")
REFUSED_PAUSE_S = 0.5

Send = Callable[[bytes], Awaitable[bool]]  # True: answered, False: refused; raises: failed


async def rest_sender(base: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(base_url=base, timeout=120)

    async def send(image: bytes) -> bool:
        r = await client.post(
            "/api/v1/predictions?heatmap=none",
            content=image,
            headers={"content-type": "image/png"},
        )
        if r.status_code == 503:
            return False
        r.raise_for_status()
        return True

    return send, client.aclose


async def http_sender(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import tritonclient.http.aio as http_aio
    from tritonclient.utils import InferenceServerException

    client = http_aio.InferenceServerClient(url, conn_limit=64, conn_timeout=120)

    async def send(image: bytes) -> bool:
        t = http_aio.InferInput("image", [1], "BYTES")
        t.set_data_from_numpy(np.array([image], dtype=object))
        try:
            await client.infer(MODEL, [t])
        except InferenceServerException as exc:
            if exc.status() == "503":
                return False
            raise
        return True

    return send, client.close


async def grpc_sender(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import grpc
    import tritonclient.grpc.aio as grpc_aio
    from tritonclient.utils import InferenceServerException

    client = grpc_aio.InferenceServerClient(url)

    async def send(image: bytes) -> bool:
        t = grpc_aio.InferInput("image", [1], "BYTES")
        t.set_data_from_numpy(np.array([image], dtype=object))
        try:
            await client.infer(MODEL, [t])
        except InferenceServerException as exc:
            if exc.status() == str(grpc.StatusCode.UNAVAILABLE):
                return False
            raise
        return True

    return send, client.close


async def level(make: Callable, clients: int, seconds: float, images: list[bytes]) -> dict:
    """`clients` closed loops for `seconds` (after one warm-up request each)."""
    send, close = await make()
    latencies: list[float] = []
    counts = {"refused": 0, "failures": 0}
    errors: list[str] = []
    try:
        await asyncio.gather(*(send(images[i % len(images)]) for i in range(clients)))
        stop = time.perf_counter() + seconds

        async def loop(worker: int) -> None:
            i = worker
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    answered = await send(images[i % len(images)])
                except Exception as exc:  # counted, and the first few kept for the report
                    counts["failures"] += 1
                    if len(errors) < 3:
                        errors.append(repr(exc)[:300])
                    continue
                if answered:
                    latencies.append(time.perf_counter() - start)
                else:
                    counts["refused"] += 1
                    await asyncio.sleep(REFUSED_PAUSE_S)
                i += clients

        began = time.perf_counter()
        await asyncio.gather(*(loop(w) for w in range(clients)))
        elapsed = time.perf_counter() - began
    finally:
        await close()
    ms = np.asarray(latencies) * 1e3 if latencies else np.asarray([np.nan])
    return {
        "clients": clients,
        "images_per_s": len(latencies) / elapsed,
        "answered": len(latencies),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        **counts,
        "errors": errors,
    }


def run(args: argparse.Namespace) -> dict:
    images = [xray_png(i, args.size) for i in range(args.images)]
    port, grpc_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    data = Path(tempfile.mkdtemp(prefix="chexray-bench-oip-"))
    env = {
        **os.environ,
        "CHEXRAY_MODEL_DIR": str(args.repo),
        "CHEXRAY_DATA_DIR": str(data),
        "CHEXRAY_PORT": str(port),
        "CHEXRAY_GRPC_PORT": str(grpc_port),
        "CHEXRAY_LOG_LEVEL": "warning",
        **dict(s.split("=", 1) for s in args.set),
    }
    proc = subprocess.Popen([PY, "-m", "chexray.cli", "serve", "--no-build"], cwd=ROOT, env=env)
    makers = {
        "rest-v1": lambda: rest_sender(base),
        "oip-http": lambda: http_sender(f"127.0.0.1:{port}"),
        "oip-grpc": lambda: grpc_sender(f"127.0.0.1:{grpc_port}"),
    }
    rows = []
    try:
        wait_ready(base + "/health/ready", proc)
        models = httpx.get(base + "/api/v1/models", timeout=10).json()
        for clients in args.clients:
            for protocol in PROTOCOLS:
                before = batch_totals(base)
                row = asyncio.run(level(makers[protocol], clients, args.seconds, images))
                after = batch_totals(base)
                batches = after[1] - before[1]
                row["mean_batch"] = (after[0] - before[0]) / batches if batches else 0.0
                row["protocol"] = protocol
                rows.append(row)
                print(
                    f"  {protocol:<9} {clients:>3} clients: {row['images_per_s']:6.2f} images/s, "
                    f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
                    f"batch {row['mean_batch']:.1f}, refused {row['refused']}, "
                    f"failures {row['failures']}",
                    flush=True,
                )
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    return {
        "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "repo": str(args.repo),
        "model_version": models["version"],
        "backend": f"{models['backend']}-{models['precision']}",
        "image_size": args.size,
        "seconds": args.seconds,
        "settings": args.set,
        "server_peak_rss_mb": rss,
        "levels": rows,
    }


def markdown(report: dict) -> str:
    lines = [
        f"# Open Inference Protocol beside /api/v1 — {report['date']}",
        "",
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores; model "
        f"{report['model_version']} on {report['backend']}; {report['image_size']}x"
        f"{report['image_size']} PNGs; {report['seconds']} s per level; "
        f"settings {report['settings'] or 'default'}; server peak RSS "
        f"{report['server_peak_rss_mb']:.0f} MB.",
        "",
        "| protocol | clients | images/s | p50 ms | p95 ms | p99 ms | mean batch | refused "
        "| failures |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["levels"]:
        lines.append(
            f"| {r['protocol']} | {r['clients']} | {r['images_per_s']:.2f} | {r['p50_ms']:.0f} "
            f"| {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']:.1f} | {r['refused']} "
            f"| {r['failures']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=ROOT / "models_onnx", help="model repository")
    p.add_argument("--clients", default="1,16", help="concurrency levels, comma-separated")
    p.add_argument("--seconds", type=float, default=30, help="per protocol and level")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=1024, help="image side in pixels")
    p.add_argument(
        "--set", action="append", default=[], metavar="CHEXRAY_X=V", help="server setting"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    if not (args.repo / "manifest.json").is_file():
        raise SystemExit(f"no model repository in {args.repo} (chexray convert builds one)")
    report = run(args)
    name = re.sub(r"[^a-z0-9]+", "-", f"{report['machine']['cpu']}-{os.cpu_count()}core".lower())
    stem = args.out / f"oip-{name.strip('-')}-{report['date']}"
    if stem.with_suffix(".json").exists():  # a second run that day keeps the first report
        stem = stem.with_name(f"{stem.name}-{dt.datetime.now():%H%M}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    print(f"\nreport: {stem}.md / .json")
    failed = sum(r["failures"] for r in report["levels"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
