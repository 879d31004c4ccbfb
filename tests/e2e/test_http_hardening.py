"""A real `chexray serve` process over real HTTP: the security headers on every answer
(every HTML page above all, whatever path reaches it), the API documentation page served
from this server's own files only (in Chromium, where installed), and a client that hangs
up mid-upload counted and logged as a client disconnect, not as a server error."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.api import xray
from tests.support.server_process import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

HTML_PAGES = ("/", "/static/index.html", "/schema", "/schema/swagger", "/schema/nope")
OTHER_ANSWERS = (
    "/static/app.js",
    "/static/style.css",
    "/static/favicon.svg",
    "/static/vendor/swagger-ui/swagger-ui-bundle.js",
    "/schema/openapi.json",
    "/api/v1/models",
    "/api/v1/studies",  # 401
    "/health/live",
    "/metrics",
    "/no/such/page",  # the router's own 404
)


@pytest.fixture(scope="module")
def server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(tiny_repo, tmp_path_factory.mktemp("hardening")) as s:
        yield s


def _csp(response: httpx.Response) -> dict[str, str]:
    policy = response.headers.get("content-security-policy", "")
    return {
        d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else ""
        for d in (part.strip() for part in policy.split(";"))
        if d
    }


def test_every_html_page_carries_the_same_csp_and_anti_framing_headers(server) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as h:
        pages = {path: h.get(path) for path in HTML_PAGES}
    policies = set()
    for path, r in pages.items():
        assert r.headers["content-type"].startswith("text/html"), path
        csp = _csp(r)
        assert csp.get("frame-ancestors") == "'none'", path
        assert csp.get("script-src") == "'self'", path
        assert csp.get("default-src") == "'self'", path
        assert r.headers.get("x-frame-options") == "DENY", path
        assert r.headers.get("x-content-type-options") == "nosniff", path
        policies.add(r.headers["content-security-policy"])
    assert len(policies) == 1
    # The page the web app is, by either path.
    assert pages["/"].content == pages["/static/index.html"].content


def test_every_answer_carries_nosniff(server) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as h:
        answers = [h.get(path) for path in OTHER_ANSWERS]
        answers.append(
            h.post("/api/v1/predictions", content=b"x", headers={"content-type": "text/plain"})
        )
        answers.append(h.request("PUT", "/api/v1/models"))  # 405
    assert {r.status_code for r in answers} >= {200, 401, 404, 405, 415}
    for r in answers:
        assert r.headers.get("x-content-type-options") == "nosniff", r.url
        assert r.headers.get("x-frame-options") == "DENY", r.url


def test_api_docs_load_nothing_from_elsewhere(server) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as h:
        page = h.get("/schema").text
    assert "https://" not in page and "http://" not in page and "<script>" not in page
    for asset in ("/static/vendor/swagger-ui/swagger-ui-bundle.js", "/static/docs.js"):
        assert f'src="{asset}"' in page


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed")
def test_api_docs_work_in_a_browser_under_the_csp(server) -> None:
    """Swagger UI renders every operation and runs one, with no CSP violation and no
    request to another origin."""
    from playwright.sync_api import sync_playwright

    base, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            elsewhere: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("request", lambda r: r.url.startswith(base) or elsewhere.append(r.url))
            live = "#operations-operations-HealthLiveLive"
            answer = f"{live} .live-responses-table tbody .response-col_status"
            page.goto(base + "/schema")
            page.wait_for_selector(live)
            operations = page.locator(".opblock").count()
            page.click(f"{live} .opblock-summary")
            page.click(f"{live} .try-out__btn")
            page.click(f"{live} .execute")
            page.wait_for_selector(answer)
            status = page.inner_text(answer)
        finally:
            browser.close()
    assert operations >= 20
    assert status.strip().startswith("200")
    assert problems == [] and elsewhere == []


def _hang_up_mid_upload(
    base: str, path: str, content_type: str, sent: bytes, missing: int = 1_000_000
) -> None:
    """Announce a body `missing` bytes larger than what is sent (within the route's body
    limit, or it is refused with 413 unread), send part of it, and close the socket."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(sent) + missing}\r\n\r\n"
        )
        s.sendall(head.encode() + sent)
        time.sleep(0.2)  # let the server start reading the body


def test_a_client_hanging_up_mid_upload_is_no_server_error(tiny_repo: Path, tmp_path: Path) -> None:
    with running_server(tiny_repo, tmp_path, CHEXRAY_LOG_LEVEL="info") as (base, proc):
        fds = Path(f"/proc/{proc.pid}/fd")
        part = (
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG" + os.urandom(2_000_000)
        )
        _hang_up_mid_upload(base, "/api/v1/predictions", "multipart/form-data; boundary=b", part)
        _hang_up_mid_upload(base, "/api/v1/predictions", "image/png", b"\x89PNG" + bytes(5000))
        _hang_up_mid_upload(
            base, "/api/chexray/anonupload", "multipart/form-data; boundary=b", part
        )
        _hang_up_mid_upload(
            base, "/api/v1/auth/login", "application/json", b'{"username": ', missing=100
        )
        metrics = ""
        deadline = time.monotonic() + 10
        while metrics.count('status="499"') < 4 and time.monotonic() < deadline:
            metrics = httpx.get(base + "/metrics", timeout=10).text
            time.sleep(0.1)
        # No file of the abandoned uploads stays open (multipart parts past 1 MiB spill
        # to unlinked temporary files).
        open_files = [os.readlink(fd) for fd in fds.iterdir()] if fds.exists() else []
        # The server still answers, and a whole upload still works.
        ok = httpx.post(
            base + "/api/v1/predictions?heatmap=none",
            content=xray(),
            headers={"content-type": "image/png"},
            timeout=30,
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log = proc.stdout.read()
    assert ok.status_code == 200, ok.text
    assert not [f for f in open_files if f.endswith("(deleted)")], open_files
    requests = [line for line in metrics.splitlines() if line.startswith("chexray_http_requests")]
    assert 'route="/api/v1/predictions",status="499"} 2.0' in metrics, requests
    assert 'route="/api/chexray/anonupload",status="499"} 1.0' in metrics, requests
    assert 'route="/api/v1/auth/login",status="499"} 1.0' in metrics, requests
    # (the only 5xx: 503s from /health/ready while the server was starting)
    assert not [r for r in requests if 'status="5' in r and "/health/ready" not in r], requests
    assert log.count("client disconnected before sending its whole request") == 4, log
    assert "Traceback" not in log and "unexpected error" not in log and " 500 " not in log, log
