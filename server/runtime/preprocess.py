"""The CPU's part of preprocessing: resize to the model's input, uint8, one channel.

Only this crosses into the engine; casting, normalisation and channel replication happen
inside the fused graph, per member, as the manifest says.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_for_model(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Squash (no crop, no letterbox) to (height, width), as the members were trained.

    Area averaging when shrinking (a 2000-pixel X-ray to 224 would alias with bilinear),
    bilinear when enlarging.
    """
    height, width = size
    if pixels.shape == (height, width):
        return np.ascontiguousarray(pixels, np.uint8)
    shrinking = pixels.shape[0] * pixels.shape[1] > height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(pixels, (width, height), interpolation=interpolation)
