"""The web app's credential: an HttpOnly session cookie plus CSRF; and rate limits."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.api import PASSWORD, client, error, register


def test_cookie_session_needs_csrf_on_unsafe_methods(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path) as c:
        register(c, "alice")
        c.cookies.clear()
        r = c.post(
            "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD, "cookie": True}
        )
        assert r.status_code == 200 and r.json()["token"] is None
        csrf = r.json()["csrf_token"]
        cookies = {h.split("=")[0]: h for h in r.headers.get_list("set-cookie")}
        assert (
            "HttpOnly" in cookies["chexray_session"]
            and "SameSite=strict" in cookies["chexray_session"]
        )
        assert "HttpOnly" not in cookies["chexray_csrf"]
        assert c.get("/api/v1/me").json()["username"] == "alice"  # safe method: cookie alone
        error(c.patch("/api/v1/me", json={"full_name": "A"}), 403, "csrf_failed")
        error(
            c.patch("/api/v1/me", json={"full_name": "A"}, headers={"x-csrf-token": "forged"}),
            403,
            "csrf_failed",
        )
        ok = c.patch("/api/v1/me", json={"full_name": "A"}, headers={"x-csrf-token": csrf})
        assert ok.status_code == 200
        assert c.post("/api/v1/auth/logout", headers={"x-csrf-token": csrf}).status_code == 204
        error(c.get("/api/v1/me"), 401, "not_authenticated")


def test_login_and_register_are_rate_limited(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path, auth_rate_limit="3/60") as c:
        for _ in range(3):
            error(
                c.post("/api/v1/auth/login", json={"username": "mallory", "password": "x" * 12}),
                401,
                "invalid_credentials",
            )
        r = c.post("/api/v1/auth/login", json={"username": "mallory", "password": "x" * 12})
        error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        r = c.post(
            "/api/v1/auth/register",
            json={
                "username": "newcomer",
                "email": "n@example.org",
                "password": PASSWORD,
                "password2": PASSWORD,
            },
        )
        error(r, 429, "rate_limited")  # same client address
        r = c.post("/api/chexray/login/", json={"username": "x", "password": "y"})
        error(r, 429, "rate_limited")


def test_sign_in_needs_json_and_a_cookie_sign_in_this_site(tiny_repo: Path, tmp_path: Path):
    """Login CSRF: a cross-site form cannot send JSON, nor claim this site's origin."""
    with client(tiny_repo, tmp_path) as c:
        register(c, "dora")
        c.cookies.clear()
        body = json.dumps({"username": "dora", "password": PASSWORD, "cookie": True})
        for path in ("/api/v1/auth/login", "/api/chexray/login/"):
            r = c.post(path, content=body, headers={"content-type": "text/plain"})
            assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
        evil = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
        for headers in (evil, {"sec-fetch-site": "cross-site"}, {"origin": evil["origin"]}):
            r = c.post(
                "/api/v1/auth/login",
                json={"username": "dora", "password": PASSWORD, "cookie": True},
                headers=headers,
            )
            assert r.status_code == 403 and r.json()["code"] == "cross_site_sign_in"
            assert "chexray_session" not in r.headers.get("set-cookie", "")
        own = {"origin": "http://testserver.local", "sec-fetch-site": "same-origin"}
        r = c.post(
            "/api/v1/auth/login",
            json={"username": "dora", "password": PASSWORD, "cookie": True},
            headers=own,
        )
        assert r.status_code == 200, r.text
        # Bearer logins (API clients, no cookie) are not tied to an origin.
        r = c.post(
            "/api/v1/auth/login", json={"username": "dora", "password": PASSWORD}, headers=evil
        )
        assert r.status_code == 200 and r.json()["token"]
