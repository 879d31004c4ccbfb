"""Helpers for API tests: an app on the tiny repository, ready to answer."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from litestar.testing import TestClient

from server.app import create_app
from server.settings import Settings
from tests.support.images import anatomy, png

PASSWORD = "correct horse battery"


@contextlib.contextmanager
def client(repo: Path, data_dir: Path, database_url: str = "", **settings) -> Iterator[TestClient]:
    settings.setdefault("auth_rate_limit", "1000/60")
    # The fp32 reference, whose answers the API tests compare exactly; the other backends
    # and precisions have tests of their own (tests/integration/test_backends.py).
    settings.setdefault("backend", "onnxruntime")
    # No gRPC server unless a test asks for one on a free port.
    settings.setdefault("grpc_port", 0)
    app = create_app(
        Settings(
            model_dir=repo,
            data_dir=data_dir,
            database_url=database_url,
            warmup_batch_sizes=(1,),
            **settings,
        )
    )
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = c.get("/health/ready")
            if r.status_code == 200 or r.json().get("error"):
                break
            time.sleep(0.05)
        yield c


def xray(seed: int = 0, size: tuple[int, int] = (240, 200)) -> bytes:
    return png(np.rint(anatomy(*size, seed=seed) * 255).astype(np.uint8))


def register(c: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    r = c.post(
        "/api/v1/auth/register",
        json={
            "username": username,
            "email": f"{username}@example.org",
            "password": password,
            "password2": password,
        },
    )
    assert r.status_code == 201, r.text
    r = c.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def upload(c: TestClient, headers: dict | None = None, seed: int = 0, **params) -> dict:
    r = c.post(
        "/api/v1/predictions",
        files={"image": ("x.png", xray(seed), "image/png")},
        data={"title": f"study {seed}"},
        headers=headers or {},
        params=params,
    )
    assert r.status_code == 200, r.text
    return r.json()


def post_image(
    c, data: bytes, content_type: str = "image/png", headers: dict | None = None, **params
):
    """POST /api/v1/predictions with a raw body (a TestClient or an httpx.Client)."""
    return c.post(
        "/api/v1/predictions",
        content=data,
        headers={"content-type": content_type, **(headers or {})},
        params=params,
    )


def error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code, body
    assert body["message"] and body["request_id"] == r.headers["x-request-id"]
    return body
