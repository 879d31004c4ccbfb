"""The benchmark stops waiting for a server that says its models failed to load (it stays
up to say why, so only its answer can tell), and keeps waiting through a plain 503."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.run import wait_ready


def _serve(bodies: list[dict]) -> ThreadingHTTPServer:
    """Answers 503 with each body in turn, then 200."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies.pop(0) if bodies else {"status": "ready"}
            data = json.dumps(body).encode()
            self.send_response(200 if body["status"] == "ready" else 503)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def alive():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_load_failure_ends_the_wait_with_the_servers_reason(alive) -> None:
    failed = {"status": "not_ready", "checks": {"models": False}, "error": "out of memory"}
    server = _serve([failed] * 100)
    url = f"http://127.0.0.1:{server.server_address[1]}/health/ready"
    with pytest.raises(SystemExit, match="will not be ready: out of memory"):
        wait_ready(url, alive, timeout=30)
    server.shutdown()


def test_loading_is_waited_for(alive) -> None:
    loading = {"status": "not_ready", "checks": {"models": False}}
    server = _serve([loading, loading])
    wait_ready(f"http://127.0.0.1:{server.server_address[1]}/health/ready", alive, timeout=30)
    server.shutdown()
