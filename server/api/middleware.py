"""Request ids, HTTP metrics, the client's address and security headers, for every
request including failed ones."""

from __future__ import annotations

import ipaddress
import re
import time
import uuid
from collections.abc import Iterable

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram

from server import tracing

# nginx's status for a client that closed the connection before the answer: counted apart
# from the server's own failures (a 5xx is a bug or an outage; this is neither).
CLIENT_CLOSED_REQUEST = 499
LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Metric labels come from this set only: a client's made-up method is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TrustedProxies:
    """The reverse proxies whose forwarding headers are believed (CHEXRAY_TRUSTED_PROXIES)."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, host: str) -> bool:
        address = parse_address(host)
        return address is not None and any(address in n for n in self.networks)


def parse_address(host: str) -> IPAddress | None:
    """An IP address from a host as a peer or X-Forwarded-For gives it ("1.2.3.4",
    "1.2.3.4:80", "::1", "[::1]:80"); IPv4-mapped IPv6 as IPv4; None if not an address."""
    host = host.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_address(scope: Scope, trusted: TrustedProxies) -> str:
    """The address of the client that made this request: the peer, unless the peer is a
    trusted proxy; then the right-most X-Forwarded-For entry that is not itself a trusted
    proxy (each proxy appends the address it got the request from, so entries left of it
    are whatever the client chose to send). The one answer to "who is this"; the request
    context middleware puts it in scope["client"] for everything downstream."""
    peer = scope.get("client")
    host = peer[0] if peer else ""
    if not trusted or host not in trusted:
        return host or "unknown"
    forwarded = [
        entry.strip()
        for name, value in scope["headers"]
        if name == b"x-forwarded-for"
        for entry in value.decode("latin-1").split(",")
        if entry.strip()
    ]
    for entry in reversed(forwarded):
        if entry not in trusted:
            return _host_of(entry)
    # Every hop is a trusted proxy: the left-most is the nearest thing to a client.
    return _host_of(forwarded[0]) if forwarded else host


def _host_of(entry: str) -> str:
    address = parse_address(entry)
    return str(address) if address is not None else entry[:100]


def forwarded_scheme(scope: Scope, trusted: TrustedProxies) -> str | None:
    """X-Forwarded-Proto from a trusted proxy (so that a TLS-terminating proxy's https is
    this request's scheme), when it is one plain value; None otherwise."""
    peer = scope.get("client")
    if not trusted or not peer or peer[0] not in trusted:
        return None
    values = [v for n, v in scope["headers"] if n == b"x-forwarded-proto"]
    if len(values) != 1:
        return None
    proto = values[0].decode("latin-1").strip().lower()
    return proto if proto in ("http", "https") else None


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


# Pages may load scripts, styles and images from this server only; no inline script or
# style; no framing by any site (frame-ancestors, and X-Frame-Options for old browsers).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


async def security_headers(message: Message, scope: Scope) -> None:
    """A `before_send` hook, so that it reaches every answer: the web app, its static
    files, the API documentation and the router's own 404s. No answer of this server is to
    be content-sniffed, framed, or run a script from elsewhere; JSON and images gain
    nothing from a CSP and lose nothing either."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        for name, value in SECURITY_HEADERS.items():
            if headers.get(name) is None:
                headers[name] = value


def client_disconnected(scope: Scope) -> bool:
    """Whether the client went away while its request was being read (http.disconnect)."""
    return bool(scope.get("state", {}).get("client_disconnected"))


def request_context(
    app: ASGIApp, metrics: HttpMetrics, trusted: TrustedProxies | None = None
) -> ASGIApp:
    """Give each request an id (the client's X-Request-ID if sane), echo it in the
    response, and count the request by its route template (not its raw path). The client
    address (client_address) replaces the peer's in scope["client"], as the scheme a
    trusted proxy forwards replaces scope["scheme"], so every reader sees the same. A
    client that disconnects mid-request is noted in the scope, so that the error Litestar
    raises for it is answered (to nobody) and counted as 499, not as a server error."""
    trusted = trusted or TrustedProxies()

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if trusted:
            scheme = forwarded_scheme(scope, trusted)
            peer = scope.get("client")
            scope["client"] = (client_address(scope, trusted), peer[1] if peer else 0)
            if scheme is not None:
                scope["scheme"] = scheme
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        start = time.perf_counter()

        async def watch_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope["state"]["client_disconnected"] = True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        # The route is known once the router has run: the span is named at the end.
        with tracing.request_span(f"HTTP {scope.get('method', '')}", scope["headers"], rid) as span:
            try:
                await app(scope, watch_receive, send_with_id)
            finally:
                route = scope.get("path_template") or "unmatched"
                method = scope.get("method", "")
                method = method if method in METHODS else "other"
                tracing.set_attributes(
                    span,
                    name=f"{method} {route}",
                    **{
                        "http.request.method": method,
                        "http.route": route,
                        "http.response.status_code": status,
                    },
                )
                metrics.requests.labels(method, route, str(status)).inc()
                metrics.latency.labels(method, route).observe(time.perf_counter() - start)

    return middleware
