"""The benchmark's images at the model's input size: the server's own resize of the same
pixels, so a level posting them differs from the sweep's only in the decoding left to do."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bench.images import write_images, write_model_size_images
from server.runtime.preprocess import resize_for_model


def test_model_size_images_are_the_servers_resize_of_the_sources(tmp_path: Path) -> None:
    sources = write_images(tmp_path / "full", 2, size=256)
    out = write_model_size_images(sources, tmp_path / "small", (48, 64))
    assert [p.parent for p in out] == [tmp_path / "small"] * 2
    assert len({p.name for p in out}) == 2
    for source, small in zip(sources, out, strict=True):
        pixels = cv2.imdecode(np.fromfile(small, np.uint8), cv2.IMREAD_UNCHANGED)
        full = cv2.imdecode(np.fromfile(source, np.uint8), cv2.IMREAD_UNCHANGED)
        assert pixels.shape == (48, 64) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, resize_for_model(full, (48, 64)))
        assert small.stat().st_size < source.stat().st_size / 4
