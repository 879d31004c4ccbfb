"""Chest-X-ray-sized test images for the benchmarks: 1024x1024 grey PNGs, each different
(body outline, lungs, ribs-like stripes, noise), so no cache or compressor flatters a run;
and the same images already at a model's input size, which leave the server almost no
decoding to do."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from server.runtime.preprocess import resize_for_model


def xray_png(seed: int, size: int = 1024) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = np.exp(-(((xx - 0.5) / rng.uniform(0.38, 0.48)) ** 4 + ((yy - 0.55) / 0.55) ** 4))
    lungs = sum(
        np.exp(-(((xx - cx) / rng.uniform(0.12, 0.17)) ** 2 + ((yy - 0.45) / 0.28) ** 2))
        for cx in (rng.uniform(0.28, 0.34), rng.uniform(0.66, 0.72))
    )
    ribs = 0.05 * np.sin(yy * rng.uniform(40, 60) + np.abs(xx - 0.5) * 8)
    img = 0.12 + 0.75 * body - 0.45 * lungs + ribs + rng.normal(0, 0.02, (size, size))
    grey = np.clip(img * 255, 0, 255).astype(np.uint8)
    return cv2.imencode(".png", grey)[1].tobytes()


def write_images(folder: Path, count: int, size: int = 1024) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"xray-{size}-{i:03d}.png"
        if not path.is_file():
            path.write_bytes(xray_png(i, size))
        paths.append(path)
    return paths


def write_model_size_images(source: list[Path], folder: Path, size: tuple[int, int]) -> list[Path]:
    """`source` resized to `size` (height, width) as the server resizes an upload, as PNGs:
    the server then decodes a few kilobytes and resizes nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in source:
        out = folder / f"{path.stem}-{size[0]}x{size[1]}.png"
        if not out.is_file():
            pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)
            out.write_bytes(cv2.imencode(".png", resize_for_model(pixels, size))[1].tobytes())
        paths.append(out)
    return paths
