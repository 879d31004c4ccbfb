"""Request ids and HTTP metrics, for every request including failed ones."""

from __future__ import annotations

import re
import time
import uuid

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "chexray_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "chexray_http_request_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            buckets=LATENCY,
            registry=registry,
        )


async def nosniff(message: Message, scope: Scope) -> None:
    """A `before_send` hook, so that it reaches every answer, the router's own 404s too: no
    answer of this server is to be reinterpreted by a browser's content sniffing."""
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)["X-Content-Type-Options"] = "nosniff"


def request_context(app: ASGIApp, metrics: HttpMetrics) -> ASGIApp:
    """Give each request an id (the client's X-Request-ID if sane), echo it in the
    response, and count the request by its route template (not its raw path)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            route = scope.get("path_template") or "unmatched"
            method = scope.get("method", "")
            metrics.requests.labels(method, route, str(status)).inc()
            metrics.latency.labels(method, route).observe(time.perf_counter() - start)

    return middleware
