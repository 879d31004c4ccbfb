"""Admission and shutdown against a real server process: an analysis is refused before its
body is read when the wait would exceed the budget, and SIGTERM lets admitted analyses
finish while new ones get 503."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.support.api import post_image, xray
from tests.support.server_process import running_server
from tests.support.slow_uploads import finish_upload, start_upload, wait_in_flight

UPLOAD = xray(seed=7, size=(256, 256))


def test_over_budget_is_refused_before_the_body_is_read(tiny_repo: Path, tmp_path: Path) -> None:
    # A budget of 0: one analysis in progress already means a wait, so the next is refused.
    with running_server(tiny_repo, tmp_path, CHEXRAY_MAX_QUEUE_WAIT_MS="0") as (base, _):
        slow = start_upload(base, UPLOAD)
        wait_in_flight(base, 1)
        # Headers announcing 20 MB and no body at all: the answer must not wait for it.
        url = urlsplit(base)
        with socket.create_connection((url.hostname, url.port), timeout=10) as probe:
            probe.sendall(
                b"POST /api/v1/predictions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: image/png\r\nContent-Length: 20000000\r\n\r\n"
            )
            head = probe.recv(65536).decode("latin-1")
        assert head.startswith("HTTP/1.1 503"), head
        assert "retry-after: " in head.lower()
        with httpx.Client(base_url=base, timeout=30) as h:
            refused = post_image(h, UPLOAD, heatmap="none")
            assert refused.status_code == 503
            assert refused.json()["code"] == "overloaded"
            assert "budget" in refused.json()["message"]
            assert int(refused.headers["retry-after"]) >= 1
            status, answer = finish_upload(slow, UPLOAD)
            assert status == 200 and len(answer["findings"]) == 5
            wait_in_flight(base, 0)
            assert post_image(h, UPLOAD, heatmap="none").status_code == 200
            metrics = h.get("/metrics").text
        assert re.search(
            r'chexray_engine_rejected_total\{model="ensemble",version="[^"]+"\} 2.0', metrics
        )


def test_sigterm_finishes_admitted_work_and_refuses_new_work(
    tiny_repo: Path, tmp_path: Path
) -> None:
    with running_server(tiny_repo, tmp_path) as (base, proc):
        slow = [start_upload(base, UPLOAD) for _ in range(3)]
        wait_in_flight(base, 3)
        proc.send_signal(signal.SIGTERM)
        with httpx.Client(base_url=base, timeout=30) as h:
            deadline = time.monotonic() + 10
            while (ready := h.get("/health/ready")).status_code == 200:
                assert time.monotonic() < deadline, "readiness never failed after SIGTERM"
                time.sleep(0.05)
            assert ready.status_code == 503
            assert ready.json()["checks"]["accepting"] is False
            assert "shutting down" in ready.json()["error"]
            refused = post_image(h, UPLOAD, heatmap="none")
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "shutting_down"
        assert proc.poll() is None, "the server must wait for the analyses it admitted"
        for sock in slow:
            status, answer = finish_upload(sock, UPLOAD)
            assert status == 200 and len(answer["findings"]) == 5
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = proc.stdout.read()
        assert "Traceback" not in log
