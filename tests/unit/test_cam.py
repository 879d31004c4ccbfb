"""Heatmaps: sized like the X-ray, hot where the CAM map peaks, combined as the seed did."""

from __future__ import annotations

import cv2
import numpy as np

from server.cam.render import combined_map, normalise, overlay, render_png


def test_overlay_has_the_image_size_and_follows_the_peak() -> None:
    image = np.full((1500, 2000), 90, np.uint8)
    cam = np.zeros((7, 7), np.float32)
    cam[1, 5] = 3.0  # known peak: row 1, column 5 of 7
    png = render_png(image, normalise(cam), alpha=0.5)
    out = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (1500, 2000, 3)
    change = np.abs(out.astype(int) - 90).sum(-1)
    y, x = np.unravel_index(change.argmax(), change.shape)
    assert 1 / 7 <= y / 1500 < 2 / 7 and 5 / 7 <= x / 2000 < 6 / 7
    # Far from the peak the X-ray shows through untouched.
    assert change[1400, 100] == 0
    # The hot spot is red-dominated (JET's top end), not blue.
    b, _, r = out[y, x]
    assert r > b


def test_normalise_is_relu_then_peak_scaling() -> None:
    cam = np.array([[-2.0, 0.0], [1.0, 4.0]], np.float32)
    np.testing.assert_allclose(normalise(cam), [[0, 0], [0.25, 1.0]])
    assert normalise(-np.ones((2, 2))).max() == 0


def test_combined_map_shows_findings_called_present() -> None:
    maps = np.zeros((5, 7, 7), np.float32)
    maps[1, 0, 0] = 1.0  # cardiomegaly, top-left
    maps[4, 6, 6] = 2.0  # pleural effusion, bottom-right
    maps[0, 3, 3] = 5.0  # atelectasis, centre, not called
    probs = np.array([0.9, 0.6, 0.1, 0.1, 0.3])
    calls = np.array([False, True, False, False, True])
    cam, shown = combined_map(maps, probs, calls)
    assert shown == [1, 4]
    assert cam[0, 0] == 1.0 and cam[6, 6] == 0.5 and cam[3, 3] == 0
    # Nothing present: the most probable finding.
    cam, shown = combined_map(maps, probs, np.zeros(5, bool))
    assert shown == [0] and cam[3, 3] == 1.0


def test_zero_alpha_leaves_the_image_unchanged() -> None:
    image = np.random.default_rng(0).integers(0, 256, (64, 80), dtype=np.uint8)
    out = overlay(image, np.ones((7, 7), np.float32), alpha=0.0)
    np.testing.assert_array_equal(out[..., 0], image)
