"""Health, readiness, metrics, the model summary and the OpenAPI schema."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.api import client, error, upload


def test_operations(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path) as c:
        assert c.get("/health/live").json() == {"status": "ok"}
        ready = c.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {
            "models_loaded": True,
            "warmed_up": True,
            "engine_healthy": True,
            "accepting": True,
            "database": True,
        }
        upload(c)
        c.post("/api/v1/predictions", content=b"junk", headers={"content-type": "image/png"})
        text = c.get("/metrics").text
        ok = 'chexray_http_requests_total{method="POST",route="/api/v1/predictions",status="200"}'
        assert ok + " 1.0" in text
        assert 'route="/api/v1/predictions",status="415"} 1.0' in text
        assert "chexray_http_request_seconds_bucket" in text
        models = c.get("/api/v1/models").json()
        v = f'model="ensemble",version="{models["version"]}"'
        assert f"chexray_engine_batch_size_count{{{v}}} 1.0" in text
        assert "chexray_engine_compute_seconds_sum" in text
        assert models["trained"] is False and models["provider"] == "CPUExecutionProvider"
        assert [m["name"] for m in models["members"]] == [
            "xception",
            "inception_resnet_v2",
            "densenet121",
            "densenet169",
            "densenet201",
        ]
        assert abs(sum(m["weights"]["Edema"] for m in models["members"]) - 1) < 1e-9
        assert models["thresholds"]["Cardiomegaly"] == 0.10835


def test_openapi_schema_documents_every_route(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path) as c:
        schema = c.get("/schema/openapi.json").json()
        paths = set(schema["paths"])
        for path in (
            "/api/v1/predictions",
            "/api/v1/auth/register",
            "/api/v1/auth/login",
            "/api/v1/auth/logout",
            "/api/v1/me",
            "/api/v1/me/password",
            "/api/v1/studies",
            "/api/v1/studies/{study_id}",
            "/api/v1/studies/{study_id}/heatmap/{finding}",
            "/api/v1/models",
            "/health/ready",
            "/metrics",
            "/api/chexray/signup",
            "/api/chexray/anonupload",
        ):
            assert path in paths, path
        components = schema["components"]["schemas"]
        assert "StudyOut" in components and "RegisterIn" in components
        assert c.get("/schema").status_code == 200


def test_not_ready_until_models_load(tiny_repo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "models"
    shutil.copytree(tiny_repo, broken)
    (broken / "ensemble.onnx").write_bytes(b"broken")
    with client(broken, tmp_path / "data") as c:
        r = c.get("/health/ready")
        assert r.status_code == 503 and r.json()["checks"]["models_loaded"] is False
        assert "ensemble.onnx" in r.json()["error"]
        body = error(
            c.post("/api/v1/predictions", content=b"x", headers={"content-type": "image/png"}),
            503,
            "models_unavailable",
        )
        assert "ensemble.onnx" in body["message"]
        assert c.get("/health/live").status_code == 200
