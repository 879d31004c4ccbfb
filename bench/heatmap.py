"""Heatmap rendering cost: CAM map -> colour overlay PNG at the X-ray's own size.

python bench/heatmap.py [--size 2000] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.cam.render import encode_png, normalise, overlay


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2000)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    # Smooth anatomy-like content with a little noise: PNG cost depends on content.
    yy, xx = np.mgrid[0 : args.size, 0 : args.size].astype(np.float32)
    smooth = 120 + 80 * np.sin(xx / (args.size / 10)) * np.cos(yy / (args.size / 7))
    image = np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)
    cam = normalise(rng.normal(0, 1, (7, 7)).astype(np.float32))
    stages = {"overlay": [], "png": [], "total": []}
    size = 0
    for _ in range(args.runs):
        t0 = time.perf_counter()
        bgr = overlay(image, cam, 0.45)
        t1 = time.perf_counter()
        size = len(encode_png(bgr))
        t2 = time.perf_counter()
        stages["overlay"].append(t1 - t0)
        stages["png"].append(t2 - t1)
        stages["total"].append(t2 - t0)
    print(f"{args.size}x{args.size} overlay, {args.runs} runs, PNG {size / 1e6:.1f} MB")
    for name, times in stages.items():
        median, best = statistics.median(times) * 1e3, min(times) * 1e3
        print(f"  {name:<8} median {median:7.1f} ms   min {best:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
