"""A slow client that holds its place in a real server: a prediction's headers and half its
body, then a pause; and the in-flight count the server reports meanwhile."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx


def start_upload(base: str, body: bytes) -> socket.socket:
    """Send POST /api/v1/predictions's headers and half the body; the rest waits."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    head = (
        "POST /api/v1/predictions?heatmap=none HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + body[: len(body) // 2])
    return sock


def finish_upload(sock: socket.socket, body: bytes) -> tuple[int, dict]:
    """Send the rest of the body; the answer's status and JSON body."""
    sock.sendall(body[len(body) // 2 :])
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def in_flight(base: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith("chexray_engine_in_flight{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no chexray_engine_in_flight metric")


def wait_in_flight(base: str, n: int) -> None:
    deadline = time.monotonic() + 10
    while in_flight(base) != n:
        assert time.monotonic() < deadline, f"never {n} analyses in flight"
        time.sleep(0.05)
