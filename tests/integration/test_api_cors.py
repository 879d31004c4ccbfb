"""CHEXRAY_CORS_ORIGINS: set from the environment, the listed origins may call the API from
a browser; no other origin is told it may."""

from __future__ import annotations

from pathlib import Path

from server.settings import Settings
from tests.support.api import client

VIEWER = "https://viewer.example.org"


def preflight(c, origin: str):
    return c.options(
        "/api/v1/predictions",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )


def test_listed_origins_may_call_the_api_and_others_are_not_told_they_may(
    tiny_repo: Path, tmp_path: Path
) -> None:
    origins = Settings.from_env({"CHEXRAY_CORS_ORIGINS": f"{VIEWER}, https://pacs.example.org"})
    assert origins.cors_origins == (VIEWER, "https://pacs.example.org")
    with client(tiny_repo, tmp_path, cors_origins=origins.cors_origins) as c:
        ok = preflight(c, VIEWER)
        assert ok.status_code in (200, 204)
        assert ok.headers["access-control-allow-origin"] == VIEWER
        assert "POST" in ok.headers["access-control-allow-methods"]
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()

        r = c.get("/api/v1/models", headers={"origin": VIEWER})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == VIEWER

        stranger = preflight(c, "https://evil.example.com")
        assert stranger.headers.get("access-control-allow-origin") != "https://evil.example.com"
        r = c.get("/api/v1/models", headers={"origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in r.headers


def test_without_the_setting_no_origin_is_allowed(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path) as c:
        r = c.get("/api/v1/models", headers={"origin": VIEWER})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
