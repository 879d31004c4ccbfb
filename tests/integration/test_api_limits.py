"""Sign-in and password limits per client address behind a trusted proxy, and body limits,
against a real `chexray serve` (the test plays the proxy at 127.0.0.1, naming the client in
X-Forwarded-For), and against one that trusts no proxy. Each runs twice: limits counted in
the server's memory (SQLite), and in PostgreSQL, as replicas sharing it count them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import create_database
from tests.support.api import PASSWORD, error
from tests.support.images import png
from tests.support.server_process import running_server


@pytest.fixture(scope="module", params=["memory", "database"])
def server(
    request: pytest.FixtureRequest, tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    env = {
        "CHEXRAY_AUTH_RATE_LIMIT": "3/60",
        "CHEXRAY_AUTH_ACCOUNT_RATE_LIMIT": "100/3600",
        "CHEXRAY_TRUSTED_PROXIES": "127.0.0.1",
        "CHEXRAY_LIMITS_STORE": request.param,
    }
    if request.param == "database":
        postgres = request.getfixturevalue("postgres")
        env["CHEXRAY_DATABASE_URL"] = create_database(postgres, "chexray_api_limits")
    root = tmp_path_factory.mktemp("limits")
    with running_server(tiny_repo, root, **env) as (base, _), httpx.Client(base_url=base) as c:
        yield c


def via(address: str) -> dict[str, str]:
    return {"x-forwarded-for": address}


def login(c, username: str, password: str, address: str | None = None, path="/api/v1/auth/login"):
    headers = via(address) if address else {}
    return c.post(path, json={"username": username, "password": password}, headers=headers)


def sign_up(c: httpx.Client, username: str, address: str) -> None:
    body = {"username": username, "email": f"{username}@example.org"}
    body |= {"password": PASSWORD, "password2": PASSWORD}
    r = c.post("/api/v1/auth/register", json=body, headers=via(address))
    assert r.status_code == 201, r.text


def test_each_client_behind_the_proxy_has_its_own_count(server: httpx.Client) -> None:
    for _ in range(3):
        error(
            login(server, "nobody1", "wrong password", "198.51.100.1"), 401, "invalid_credentials"
        )
    r = login(server, "nobody2", "wrong password", "198.51.100.1")
    body = error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60 and "try again" in body["message"]
    # what the client writes left of the proxy's entry changes nothing
    forged = "203.0.113.77, 198.51.100.1"
    error(login(server, "nobody3", "wrong password", forged), 429, "rate_limited")
    # the legacy API counts against the same address
    r = login(server, "nobody4", "x", "198.51.100.1", path="/api/chexray/login/")
    error(r, 429, "rate_limited")
    error(login(server, "nobody5", "wrong password", "198.51.100.2"), 401, "invalid_credentials")


def test_an_ipv6_client_counts_by_its_64(server: httpx.Client) -> None:
    for i in range(3):
        r = login(server, f"six{i}", "wrong password", f"2001:db8:1:2::{i + 1}")
        error(r, 401, "invalid_credentials")
    error(login(server, "six9", "wrong password", "2001:db8:1:2:ffff::9"), 429, "rate_limited")
    error(login(server, "six9", "wrong password", "2001:db8:1:3::1"), 401, "invalid_credentials")


def test_strangers_hammering_a_username_do_not_lock_its_owner_out(server: httpx.Client) -> None:
    sign_up(server, "olga", "203.0.113.10")
    for stranger in ("198.51.100.20", "198.51.100.21", "198.51.100.22"):
        for _ in range(3):
            error(login(server, "olga", "guess guess guess", stranger), 401, "invalid_credentials")
        error(login(server, "olga", PASSWORD, stranger), 429, "rate_limited")
    # the owner, from where she registered and from an address never used before
    assert login(server, "olga", PASSWORD, "203.0.113.10").status_code == 200
    r = login(server, "olga", PASSWORD, "192.0.2.44", path="/api/chexray/login/")
    assert r.status_code == 200, r.text


def test_password_changes_are_limited_per_account_and_per_address(server: httpx.Client) -> None:
    sign_up(server, "pavel", "203.0.113.30")
    token = login(server, "pavel", PASSWORD, "203.0.113.30").json()["token"]
    auth = {"authorization": f"Bearer {token}"}

    def change(current: str, address: str) -> httpx.Response:
        body = {"current_password": current, "new_password": "a new passphrase"}
        body["new_password2"] = body["new_password"]
        return server.post("/api/v1/me/password", json=body, headers=auth | via(address))

    for i in range(3):
        error(change("not my password", f"198.51.100.{40 + i}"), 401, "invalid_credentials")
    # the account's count, from any address, even with the right password
    r = change(PASSWORD, "203.0.113.31")
    body = error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60 and body["message"]
    # an address's count, whatever the account: three tries of another user's from one address
    sign_up(server, "quinn", "203.0.113.32")
    other = login(server, "quinn", PASSWORD, "203.0.113.32").json()["token"]
    other_auth = {"authorization": f"Bearer {other}"}
    for _ in range(3):
        r = server.post(
            "/api/v1/me/password",
            json={"current_password": PASSWORD, "new_password": "x", "new_password2": "y"},
            headers=other_auth | via("198.51.100.50"),
        )
        error(r, 422, "password_mismatch")
    r = server.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "x", "new_password2": "y"},
        headers=other_auth | via("198.51.100.50"),
    )
    error(r, 429, "rate_limited")


def test_json_bodies_are_small_and_uploads_keep_their_limit(server: httpx.Client) -> None:
    big = json.dumps({"username": "a", "password": "p" * 100_000}).encode()
    for path in ("/api/v1/auth/login", "/api/v1/auth/register", "/api/chexray/signup/"):
        r = server.post(path, content=big, headers={"content-type": "application/json"})
        body = error(r, 413, "payload_too_large")
        assert body["detail"] == {"limit_bytes": 64 * 1024}

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        yield b'{"username": "a", "password": "'
        for _ in range(16):
            yield b"p" * 16_384
        yield b'"}'

    r = server.post(
        "/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    error(r, 413, "payload_too_large")
    # the connection (or a new one) still serves: a small log-in is judged on its merits
    error(login(server, "nobody", "wrong password", "198.51.100.60"), 401, "invalid_credentials")

    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    image = png(noise)
    assert len(image) > 64 * 1024
    r = server.post(
        "/api/v1/predictions", files={"image": ("x.png", image, "image/png")}, data={"title": "n"}
    )
    assert r.status_code == 200, r.text
    r = server.post("/api/chexray/anonupload/", files={"image": ("x.png", image, "image/png")})
    assert r.status_code == 200, r.text


def test_a_proxy_forwards_the_scheme_for_the_cookie_sign_in_check(server: httpx.Client):
    """Behind a TLS-terminating proxy the browser's Origin is https: the trusted proxy's
    X-Forwarded-Proto makes it this server's own."""
    sign_up(server, "rosa", "203.0.113.60")
    origin = "https://" + server.base_url.netloc.decode()
    body = {"username": "rosa", "password": PASSWORD, "cookie": True}
    headers = {"origin": origin} | via("203.0.113.60")
    r = server.post("/api/v1/auth/login", json=body, headers=headers)
    error(r, 403, "cross_site_sign_in")
    r = server.post(
        "/api/v1/auth/login", json=body, headers=headers | {"x-forwarded-proto": "https"}
    )
    assert r.status_code == 200 and r.json()["csrf_token"], r.text


def test_without_trusted_proxies_forwarding_headers_are_ignored(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """Nobody trusted (the default), not even a peer at 127.0.0.1: a client naming another
    address in X-Forwarded-For is still counted as itself."""
    env = {"CHEXRAY_AUTH_RATE_LIMIT": "3/60"}
    with running_server(tiny_repo, tmp_path, **env) as (base, _), httpx.Client(base_url=base) as c:
        for i in range(3):
            r = login(c, "mallory", "wrong password", f"198.51.100.{i}")
            error(r, 401, "invalid_credentials")
        error(login(c, "mallory", "wrong password", "198.51.100.99"), 429, "rate_limited")
