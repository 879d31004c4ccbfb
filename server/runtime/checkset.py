"""Generated chest-X-ray-like pictures: the fixed check set on which every served precision
is compared with fp32, and the pictures the tests send. Deterministic for a given seed."""

from __future__ import annotations

import numpy as np


def anatomy(height: int = 240, width: int = 200, seed: int = 0) -> np.ndarray:
    """A float 0..1 chest-like picture: dark lungs in a bright body, plus texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    body = np.exp(
        -(((xx - width / 2) / (0.45 * width)) ** 4 + ((yy - height / 2) / (0.55 * height)) ** 4)
    )
    lungs = sum(
        np.exp(-(((xx - cx) / (0.16 * width)) ** 2 + ((yy - 0.45 * height) / (0.3 * height)) ** 2))
        for cx in (0.32 * width, 0.68 * width)
    )
    img = 0.15 + 0.75 * body - 0.5 * lungs + rng.normal(0, 0.02, (height, width))
    return np.clip(img, 0, 1).astype(np.float32)


def check_set(height: int, width: int, n: int = 16, seed: int = 2026) -> np.ndarray:
    """uint8 [n, height, width] at model resolution: anatomy with varied contrast,
    brightness, opacities (bright blobs where findings would be) and noise, so the
    networks' outputs spread instead of all sitting in one spot."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((n, height, width), np.uint8)
    for i in range(n):
        img = anatomy(height, width, seed=seed + i)
        for _ in range(int(rng.integers(0, 4))):
            cy, cx = rng.uniform(0.25, 0.8) * height, rng.uniform(0.15, 0.85) * width
            r = rng.uniform(0.05, 0.2) * width
            img = img + rng.uniform(0.1, 0.5) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)
        img = img * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
        img = img + rng.normal(0, rng.uniform(0.0, 0.05), img.shape)
        out[i] = np.rint(np.clip(img, 0, 1) * 255)
    return out
