"""The browser app: index.html at / and its static files under /static/; the API
documentation page (Swagger UI, served from this server's own files) under /schema.

Every answer carries the security headers of server/api/middleware.py (a before_send
hook), so a page reached by another path (/static/index.html) is as strict as /."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.static_files import create_static_files_router

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
STATIC = "/static"
# Swagger UI's files, committed under server/web/vendor/swagger-ui (see its README.md).
SWAGGER_UI = f"{STATIC}/vendor/swagger-ui"
SWAGGER_UI_VERSION = "5.18.2"


@get("/", include_in_schema=False, media_type="text/html")
async def index() -> Response[bytes]:
    return Response(
        (WEB_DIR / "index.html").read_bytes(),
        media_type="text/html",
        headers={"Cache-Control": "no-cache"},
    )


static = create_static_files_router(
    path=STATIC,
    directories=[WEB_DIR],
    include_in_schema=False,
    cache_control=CacheControlHeader(no_cache=True),
)


class SwaggerDocs(OpenAPIRenderPlugin):
    """Swagger UI from this server's own copy, started by a script file (the pages' CSP
    allows no inline script). Litestar's render plugins load their scripts, unpinned, from
    a CDN onto the origin whose CSRF cookie scripts can read; this one loads nothing from
    elsewhere: no CDN, no favicon from afar, no online validator."""

    def __init__(self, *, path: str | Sequence[str] = "/swagger", **kwargs: Any) -> None:
        super().__init__(path=path, **kwargs)

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(f"{openapi_schema['info']['title']} API")
        spec = html.escape(self.get_openapi_json_route(request))
        return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="icon" href="{STATIC}/favicon.svg" type="image/svg+xml">
  <link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css">
  <link rel="stylesheet" href="{STATIC}/docs.css">
  <script src="{SWAGGER_UI}/swagger-ui-bundle.js" defer></script>
  <script src="{STATIC}/docs.js" defer></script>
</head>
<body>
  <div id="swagger-ui" data-spec-url="{spec}"></div>
  <noscript>The API documentation needs JavaScript; the schema itself is at
    <a href="{spec}">{spec}</a>.</noscript>
</body>
</html>
""".encode()


class NoDocs(OpenAPIRenderPlugin):
    """With the documentation pages off (CHEXRAY_API_DOCS=false): /schema answers 404 (it
    would otherwise serve the JSON schema, Litestar's root default); /schema/openapi.json
    stays, and every other /schema path is Litestar's 404."""

    def __init__(self) -> None:
        super().__init__(path="/")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        raise NotFoundException(
            "the API documentation pages are off (CHEXRAY_API_DOCS=false); "
            f"the schema is at {self.get_openapi_json_route(request)}"
        )
