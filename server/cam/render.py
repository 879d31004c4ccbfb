"""CAM maps -> colour overlays on the X-ray, as PNG.

Vectorised with OpenCV end to end (resize, colour map, per-pixel blend, encode): a
2000x2000 overlay costs tens of milliseconds, not seconds. Called off the event loop.
"""

from __future__ import annotations

import cv2
import numpy as np

# Evidence below this fraction of a map's peak is left uncoloured, so the X-ray stays
# readable where nothing points.
FLOOR = 0.15


def normalise(cam: np.ndarray) -> np.ndarray:
    """ReLU, then scale to [0, 1] by the map's own peak (an all-negative map stays 0)."""
    cam = np.maximum(cam.astype(np.float32), 0.0)
    peak = float(cam.max())
    return cam / peak if peak > 0 else cam


def combined_map(
    cam_maps: np.ndarray, probabilities: np.ndarray, calls: np.ndarray
) -> tuple[np.ndarray, list[int]]:
    """One map for the findings called present (the legacy application's `newcomp_image`): the
    pixel-wise maximum of their normalised maps, each weighted by its probability relative
    to the strongest. With nothing present, the most probable finding's map.
    Returns the map and the indices of the findings it shows."""
    shown = [int(i) for i in np.flatnonzero(calls)] or [int(np.argmax(probabilities))]
    top = max(float(probabilities[i]) for i in shown) or 1.0
    maps = [normalise(cam_maps[i]) * (float(probabilities[i]) / top) for i in shown]
    return np.maximum.reduce(maps), shown


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float) -> np.ndarray:
    """BGR uint8 [H, W, 3]: JET heatmap over the grey image, opacity rising with evidence.

    `image` is uint8 [H, W]; `cam` a [h, w] map in [0, 1] (upsampled here, bilinear).
    """
    height, width = image.shape
    m = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.clip(m * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = np.clip((m - FLOOR) / (1.0 - FLOOR), 0.0, 1.0) * alpha
    grey = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.blendLinear(heat, grey, weight, 1.0 - weight)


def encode_png(bgr: np.ndarray) -> bytes:
    """PNG bytes. Encoding, not blending, is the cost: zlib level 1 with the SUB filter
    took 157 ms for a 2000x2000 overlay where the defaults took 399 ms, for 10% more bytes."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    ok, buf = cv2.imencode(".png", bgr, params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def render_png(image: np.ndarray, cam: np.ndarray, alpha: float) -> bytes:
    return encode_png(overlay(image, cam, alpha))


def heatmap_png(
    pixels: np.ndarray,
    cam_maps: np.ndarray,
    probabilities: np.ndarray,
    calls: np.ndarray,
    finding: int | None,
    alpha: float,
) -> bytes:
    """The overlay PNG for one finding (its index), or for the findings called present."""
    if finding is None:
        cam, _ = combined_map(cam_maps, probabilities, calls)
    else:
        cam = normalise(cam_maps[finding])
    return render_png(pixels, cam, alpha)
