"""NumPy reference for what the fused graph does in front of each network.

Parity checks feed the same random images through this reference and the ONNX graph,
so a mistake in either shows up as a difference.
"""

from __future__ import annotations

import zlib

import numpy as np

from server.runtime.manifest import Preprocess


def random_images(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [n, height, width]: smooth blobs plus noise, so nothing saturates."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = np.empty((n, height, width), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.2, 0.6) * max(height, width)
        blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        noise = rng.normal(0, 20, (height, width))
        images[i] = np.clip(blob + noise + 30, 0, 255).astype(np.uint8)
    return images


def preprocess(images: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Grey [n, h, w] (uint8, or float after a resize) -> float32 network input in the
    spec's layout and channels."""
    x = images.astype(np.float32)[..., None]  # [n, h, w, 1]
    x = np.repeat(x, spec.channels, axis=-1)
    mean = np.asarray(spec.mean[: spec.channels], np.float32)
    std = np.asarray(spec.std[: spec.channels], np.float32)
    x = (x - mean) / std
    if spec.layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x.astype(np.float32)


def seed_for(name: str) -> int:
    """A stable per-network seed, so random-initialised rebuilds are reproducible."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF
