"""The OpenAPI schema tells the truth, and the server keeps to it: what the schema fuzzer
(tests/e2e/test_schema_fuzz.py) found, each pinned down here on its own."""

from __future__ import annotations

from pathlib import Path

import jsonschema_rs
import pytest

from tests.support.api import PASSWORD, client, error, register, xray

ERROR_STATUSES = {"400", "401", "403", "404", "409", "413", "415", "422", "429", "503"}
STRICT_BODIES = ("RegisterIn", "LoginIn", "ProfilePatch", "PasswordChange", "KeyIn")


@pytest.fixture
def c(tiny_repo: Path, tmp_path: Path):
    with client(tiny_repo, tmp_path) as c:
        yield c


def _operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def test_every_error_answer_is_documented_as_the_error_body(c) -> None:
    schema = c.get("/schema/openapi.json").json()
    error_schema = schema["components"]["schemas"]["Error"]
    # `detail` is any JSON value, null included, matching once (not a oneOf null matches
    # twice, which made every `"detail": null` answer invalid).
    assert error_schema["properties"]["detail"] == {}
    validator = jsonschema_rs.validator_for(error_schema)
    assert validator.is_valid({"code": "x", "message": "y", "detail": None, "request_id": None})
    documented = set()
    for name, operation in _operations(schema):
        for status, response in operation["responses"].items():
            if status in ERROR_STATUSES and name != "GET /health/ready":
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (name, status)
                documented.add(status)
            if status == "204":
                assert "content" not in response, name  # a 204 has no body
    assert documented == ERROR_STATUSES
    ops = dict(_operations(schema))
    assert set(ops["POST /api/v1/predictions"]["responses"]) >= {"200", "400", "413", "415"}
    # 403: an API key is refused beyond inference (key_scope).
    assert set(ops["GET /api/v1/me"]["responses"]) == {"200", "401", "403", "503"}
    assert ops["GET /health/ready"]["responses"]["503"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/Health"}


def test_uploads_and_credentials_are_documented(c) -> None:
    schema = c.get("/schema/openapi.json").json()
    ops = dict(_operations(schema))
    for name in (
        "POST /api/v1/predictions",
        "POST /api/chexray/upload",
        "POST /api/chexray/anonupload",
    ):
        body = ops[name]["requestBody"]
        assert body["required"] is True
        assert set(body["content"]) == {
            "multipart/form-data",
            "image/png",
            "image/jpeg",
            "application/dicom",
            "application/octet-stream",
        }
        form = body["content"]["multipart/form-data"]["schema"]
        assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
        assert "title" in [p["name"] for p in ops[name]["parameters"]]
    schemes = schema["components"]["securitySchemes"]
    assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
    assert (schemes["session"]["in"], schemes["session"]["name"]) == ("cookie", "chexray_session")
    assert ops["GET /api/v1/me"]["security"] == [{"bearer": []}, {"session": []}]
    assert {} in ops["POST /api/v1/predictions"]["security"]  # anyone; signed in or not
    # API keys: where inference is, and nowhere else (not on key management itself).
    assert (schemes["api_key"]["in"], schemes["api_key"]["name"]) == ("header", "X-API-Key")
    with_keys = {n for n, op in ops.items() if {"api_key": []} in op.get("security", [])}
    assert with_keys == {
        "POST /api/v1/predictions",
        "POST /api/chexray/upload",
        "POST /api/chexray/anonupload",
        "POST /api/v1/pacs/pulls",  # analyses what it pulls: inference
    }
    assert {} not in ops["POST /api/v1/pacs/pulls"]["security"]  # never anonymous
    for name in ("POST /api/v1/me/keys", "GET /api/v1/me/keys", "DELETE /api/v1/me/keys/{key_id}"):
        assert ops[name]["security"] == [{"bearer": []}, {"session": []}], name
    assert set(ops["POST /api/v1/me/keys"]["responses"]) >= {"201", "400", "401", "403", "409"}
    assert "security" not in ops["POST /api/v1/auth/login"]
    for body in STRICT_BODIES:  # forbid_unknown_fields, said in the schema
        assert schema["components"]["schemas"][body]["additionalProperties"] is False, body


def test_options_names_every_method_of_a_path(c) -> None:
    """Litestar 2 named only the first handler's method for a path served by several."""
    assert c.options("/api/v1/me").headers["allow"] == "DELETE, GET, OPTIONS, PATCH"
    assert c.options("/api/v1/studies/abc").headers["allow"] == "DELETE, GET, OPTIONS"
    assert c.options("/api/v1/predictions").headers["allow"] == "OPTIONS, POST"


def test_the_routers_own_errors_carry_a_request_id_and_are_counted(c) -> None:
    error(c.get("/no/such/page"), 404, "not_found")
    error(c.put("/api/v1/me"), 405, "method_not_allowed")
    c.request("FROB", "/api/v1/me")
    metrics = c.get("/metrics").text
    assert 'method="GET",route="unmatched",status="404"} 1.0' in metrics
    assert 'method="PUT",route="unmatched",status="405"} 1.0' in metrics
    assert 'method="other",route="unmatched",status="405"} 1.0' in metrics  # no made-up labels
    assert "FROB" not in metrics


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "alice\n"),  # Python's `$` also matched before a final newline
        ("email", "alice@example.org\n"),
        ("email", "alice@exa\x1fmple.org"),  # a control character JSON Schema's \s allows
    ],
)
def test_usernames_and_emails_keep_to_their_documented_patterns(c, field, value) -> None:
    body = {"username": "alice", "email": "alice@example.org"}
    body[field] = value
    r = c.post("/api/v1/auth/register", json={**body, "password": PASSWORD, "password2": PASSWORD})
    detail = error(r, 400, "invalid_request")["detail"]
    assert detail[0]["key"] == field
    pattern = c.get("/schema/openapi.json").json()["components"]["schemas"]["RegisterIn"][
        "properties"
    ][field]["pattern"]
    assert not jsonschema_rs.validator_for({"type": "string", "pattern": pattern}).is_valid(value)


def test_a_second_image_or_title_is_refused(c) -> None:
    auth = register(c, "bob")
    two_titles = c.post(
        "/api/v1/predictions",
        headers=auth,
        files=[
            ("image", ("x.png", xray(), "image/png")),
            ("title", (None, "one")),
            ("title", (None, "two")),
        ],
    )
    error(two_titles, 400, "invalid_title")
    two_images = c.post(
        "/api/chexray/upload",
        headers={"Authorization": auth["Authorization"].replace("Bearer", "Token")},
        files=[
            ("image", ("x.png", xray(), "image/png")),
            ("image", ("y.png", xray(1), "image/png")),
        ],
    )
    error(two_images, 400, "missing_image")
    assert c.get("/api/v1/studies", headers=auth).json()["total"] == 0
