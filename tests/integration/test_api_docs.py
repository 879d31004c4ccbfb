"""The API documentation: Swagger UI from this server's own (vendored, unchanged) files at
/schema and /schema/swagger, or no pages at all with CHEXRAY_API_DOCS=false, while the JSON
schema stays."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from server.api.web import SWAGGER_UI_VERSION, WEB_DIR
from server.settings import Settings
from tests.support.api import client

VENDOR = WEB_DIR / "vendor" / "swagger-ui"


def test_docs_pages_use_this_servers_files_only(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path) as c:
        for path in ("/schema", "/schema/swagger"):
            page = c.get(path)
            assert page.status_code == 200
            urls = re.findall(r'(?:src|href)="([^"]*)"', page.text)
            assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls)
            for url in urls:
                assert c.get(url).status_code == 200, url
            assert "<script>" not in page.text  # the CSP allows no inline script
        assert c.get("/schema/openapi.json").json()["info"]["title"] == "CheXray"


def test_docs_off_leaves_the_json_schema(tiny_repo: Path, tmp_path: Path) -> None:
    settings = Settings.from_env({"CHEXRAY_API_DOCS": "false"})
    assert settings.api_docs is False
    with client(tiny_repo, tmp_path, api_docs=settings.api_docs) as c:
        for path in ("/schema", "/schema/", "/schema/swagger", "/schema/redoc"):
            assert c.get(path).status_code == 404, path
        schema = c.get("/schema/openapi.json")
        assert schema.status_code == 200 and "/api/v1/predictions" in schema.json()["paths"]


def test_vendored_swagger_ui_is_the_published_one() -> None:
    """The files are the npm package's, byte for byte, as their README records, with the
    licence beside them."""
    readme = (VENDOR / "README.md").read_text()
    assert f"`swagger-ui-dist` {SWAGGER_UI_VERSION}" in readme
    recorded = dict(re.findall(r"\| `([\w.-]+)` \| `([0-9a-f]{64})` \|", readme))
    assert set(recorded) == {"swagger-ui-bundle.js", "swagger-ui.css"}
    for name, digest in recorded.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License" in (VENDOR / "LICENSE").read_text()
    assert "SmartBear" in (VENDOR / "NOTICE").read_text()
