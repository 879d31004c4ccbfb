"""The browser app: index.html at / and its static files under /static/."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

WEB_DIR = Path(__file__).resolve().parents[1] / "web"

# Scripts, styles and images only from this server; no inline script; no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
        "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@get("/", include_in_schema=False, media_type="text/html")
async def index() -> Response[bytes]:
    return Response(
        (WEB_DIR / "index.html").read_bytes(),
        media_type="text/html",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


static = create_static_files_router(
    path="/static",
    directories=[WEB_DIR],
    include_in_schema=False,
    cache_control=CacheControlHeader(no_cache=True),
)
