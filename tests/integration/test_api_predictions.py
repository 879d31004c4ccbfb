"""POST /api/v1/predictions: anonymous and signed in, inline or stored, and bad input."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.api import client, error, post_image, register, upload, xray
from tests.support.images import dicom_ramp, png_header_only


@pytest.fixture
def c(tiny_repo: Path, tmp_path: Path):
    with client(tiny_repo, tmp_path, max_upload_bytes=200_000) as c:
        yield c


def test_anonymous_prediction_has_an_inline_heatmap_and_is_not_stored(c) -> None:
    body = upload(c)
    assert body["id"] is None and body["stored"] is False and body["urls"] is None
    assert [f["name"] for f in body["findings"]] == [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
    ]
    for f in body["findings"]:
        assert 0 <= f["probability"] <= 1 and f["present"] == (f["probability"] >= f["threshold"])
    assert body["trained"] is False and "not trained" in body["warnings"][0]
    assert len(body["members"]) == 5 and body["model_version"].startswith("tiny-")
    assert body["timings"]["compute_ms"] > 0 and body["timings"]["total_ms"] > 0
    heat = cv2.imdecode(np.frombuffer(base64.b64decode(body["heatmap_png_base64"]), np.uint8), 1)
    assert heat.shape == (240, 200, 3)
    assert body["title"] == "study 0"


def test_raw_body_dicom_and_anonymous_storage(c) -> None:
    r = post_image(c, dicom_ramp(), "application/dicom", store="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stored"] and body["id"] and body["heatmap_png_base64"] is None
    assert body["image"]["format"] == "dicom"
    # Reachable by its unguessable id without credentials, stored as PNG, never as DICOM.
    image = c.get(body["urls"]["image"])
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert c.get(body["urls"]["heatmap"]).headers["content-type"] == "image/png"
    assert c.get(body["urls"]["study"]).json()["id"] == body["id"]


def test_heatmap_modes(c) -> None:
    assert upload(c, heatmap="none")["heatmap_png_base64"] is None
    error(
        c.post(
            "/api/v1/predictions",
            files={"image": ("x.png", xray(), "image/png")},
            params={"heatmap": "url"},
        ),
        400,
        "heatmap_url_needs_storage",
    )
    stored = upload(c, store="true", heatmap="inline")
    assert stored["heatmap_png_base64"] and stored["urls"]
    error(post_image(c, xray(), heatmap="sideways"), 400, "invalid_request")


def test_signed_in_predictions_become_studies(c) -> None:
    h = register(c, "alice")
    body = upload(c, h)
    assert body["stored"] and body["urls"]["heatmaps"]["Pleural Effusion"].endswith(
        "/heatmap/pleural_effusion"
    )
    assert body["heatmap_png_base64"] is None
    assert c.get("/api/v1/studies", headers=h).json()["total"] == 1


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"this is a text file named x.png\n", "image/png", 415, "unsupported_format"),
        (b"", "image/png", 400, "empty_image"),
        (png_header_only(30000, 30000), "image/png", 413, "image_too_many_pixels"),
        (xray()[:300], "image/png", 422, "corrupt_image"),
        (b"\x89PNG" + b"\0" * 300_000, "image/png", 413, "image_too_large"),
        (b"{}", "application/json", 415, "unsupported_media_type"),
    ],
)
def test_bad_uploads(c, content: bytes, content_type: str, status: int, code: str) -> None:
    error(post_image(c, content, content_type), status, code)


def test_body_over_the_server_limit(c) -> None:
    error(post_image(c, b"\0" * 1_400_000), 413, "payload_too_large")


def test_multipart_without_an_image(c) -> None:
    r = c.post("/api/v1/predictions", files={"picture": ("x.png", xray(), "image/png")})
    error(r, 400, "missing_image")
    r = c.post("/api/v1/predictions", files={"image": ("x.txt", b"hello", "text/plain")})
    error(r, 415, "unsupported_format")


def test_request_id_is_echoed(c) -> None:
    r = post_image(c, b"", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" and r.json()["request_id"] == "abc-123"


def test_inline_image_and_cam_maps_for_client_side_heatmaps(c) -> None:
    body = post_image(c, dicom_ramp(), "application/dicom", image="inline").json()
    image = cv2.imdecode(
        np.frombuffer(base64.b64decode(body["image_png_base64"]), np.uint8), cv2.IMREAD_UNCHANGED
    )
    assert image.shape == (240, 200) and image.dtype == np.uint8  # grey, as decoded
    maps = np.asarray(body["cam_maps"])
    assert maps.shape == (5, 4, 4)  # the tiny CAM network's 4x4 feature map
    assert upload(c)["image_png_base64"] is None
