"""Drawing off the event loop: heatmap overlays and PNG encoding in a small thread pool of
their own (OpenCV releases the GIL), apart from the engine's decode pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import cv2
import numpy as np

from server.cam.render import encode_png, heatmap_png
from server.runtime.findings import FINDINGS
from server.runtime.threads import side_pool

T = TypeVar("T")


class Renderer:
    def __init__(
        self,
        alpha: float,
        threads: int,
        observe: Callable[[float], None] | None = None,
        nice: int = 0,
    ) -> None:
        """`observe`: called with each heatmap's drawing time in seconds (metrics); `nice`:
        how far below the engine's threads the drawing threads run (server/runtime/threads)."""
        self.alpha = alpha
        self._observe = observe
        self._pool = side_pool(threads, "chexray-render", nice)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _heatmap(self, pixels, cam_maps, probabilities, calls, finding: str | None) -> bytes:
        t = time.perf_counter()
        index = None if finding is None else FINDINGS.index(finding)
        png = heatmap_png(pixels, cam_maps, probabilities, calls, index, self.alpha)
        if self._observe is not None:
            self._observe(time.perf_counter() - t)
        return png

    async def heatmap(
        self,
        pixels: np.ndarray,
        cam_maps: np.ndarray,
        probabilities: np.ndarray,
        calls: np.ndarray,
        finding: str | None = None,
    ) -> bytes:
        """PNG overlay at the image's own size: the findings called present combined, or one
        finding's map. ValueError for an unknown finding."""
        if finding is not None and finding not in FINDINGS:
            raise ValueError(f"unknown finding {finding!r}; one of {list(FINDINGS)}")
        return await self._run(self._heatmap, pixels, cam_maps, probabilities, calls, finding)

    async def encode_png(self, pixels: np.ndarray) -> bytes:
        return await self._run(encode_png, pixels)

    async def decode_grey(self, png: bytes) -> np.ndarray:
        return await self._run(
            lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE), png
        )
