"""Schemathesis against a real tiny-preset `chexray serve`, driven by the server's own
OpenAPI schema: every documented operation, with examples at the schema's edges
(coverage), generated ones (fuzzing) and chains of calls along the links Schemathesis
infers from the schema (stateful: predict -> the study -> its image and heatmaps -> delete
-> gone). Every check is on: no 5xx anywhere, every status code, content type, header and
body documented and matching its schema, schema-violating requests refused, valid ones
accepted, a deleted study gone, authentication not ignored.

Bounded for CI: a fixed seed and a few examples per operation (under a minute on 2 cores),
and the run is stopped (a failure) past SCHEMA_FUZZ_SECONDS (150). SCHEMA_FUZZ_EXAMPLES
raises the examples per operation for a longer run, and SCHEMA_FUZZ_SEED changes the seed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import ROOT
from tests.support.api import PASSWORD
from tests.support.server_process import running_server

EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "25"))
SECONDS = int(os.environ.get("SCHEMA_FUZZ_SECONDS", "150"))
SEED = int(os.environ.get("SCHEMA_FUZZ_SEED", "20260101"))
UPLOADS = "^/api/(v1/predictions|chexray/(upload|anonupload))$"
PASSWORD_RULES = "^/api/(v1/auth/register|chexray/signup|v1/me/password)$"
PACS = "^/api/v1/(pacs/pulls|studies/[^/]+/pacs)$"


def sign_in(h: httpx.Client, username: str) -> str:
    body = {"username": username, "email": f"{username}@example.org"}
    r = h.post("/api/v1/auth/register", json={**body, "password": PASSWORD, "password2": PASSWORD})
    assert r.status_code == 201, r.text
    r = h.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def config(tokens: dict[str, str]) -> str:
    """The run's settings (schemathesis.toml). One user for everything; logging out and
    deleting the account each spend a user of their own, so that neither revokes the
    token the rest of the run uses. What no schema can say is allowed for explicitly:
    random bytes are not an X-ray (400/415/422 for schema-valid uploads), a valid password
    may still be weak, differ from its repetition, or be wrong (401/422), and a multipart
    text field cannot be of the wrong type."""
    return f"""
seed = {SEED}
workers = 1
headers = {{ Authorization = "Bearer {tokens["main"]}" }}

[cache]
enabled = false

[generation]
max-examples = {EXAMPLES}
database = "none"

[checks]
enabled = true

[[operations]]
include-name = "POST /api/v1/auth/logout"
headers = {{ Authorization = "Bearer {tokens["logout"]}" }}

[[operations]]
include-name = "DELETE /api/v1/me"
headers = {{ Authorization = "Bearer {tokens["delete"]}" }}

[[operations]]
include-path-regex = "{UPLOADS}"
checks.positive_data_acceptance.expected-statuses = ["2XX", 400, 401, 403, 404, 413, 415, 422]
# A multipart field is text: a title generated as null or 5 arrives as "null" or "5", a
# valid title; no body of these can be "schema-violating" in a way the server could see.
checks.negative_data_rejection.enabled = false

[[operations]]
include-name = "GET /api/v1/studies"
# Unknown query parameters are ignored, as everywhere on the web.
generation.allow-extra-parameters = false

[[operations]]
include-path-regex = "{PACS}"
# No PACS is configured here: these answer 503 pacs_not_configured, as documented (the PACS
# itself is exercised in tests/e2e/test_pacs_roundtrip.py).
checks.not_a_server_error.enabled = false
checks.positive_data_acceptance.expected-statuses = ["2XX", 401, 403, 404, 409, 503]

[[operations]]
include-path-regex = "{PASSWORD_RULES}"
checks.positive_data_acceptance.expected-statuses = ["2XX", 401, 403, 404, 409, 422, 429]
"""


def test_the_api_keeps_to_its_schema(tiny_repo: Path, tmp_path: Path) -> None:
    with running_server(tiny_repo, tmp_path, CHEXRAY_AUTH_RATE_LIMIT="100000/60") as (base, _):
        with httpx.Client(base_url=base, timeout=30) as h:
            tokens = {who: sign_in(h, f"fuzz_{who}") for who in ("main", "logout", "delete")}
        settings = tmp_path / "schemathesis.toml"
        settings.write_text(config(tokens))
        report = tmp_path / "report.json"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(settings),
                "run",
                f"{base}/schema/openapi.json",
                "--report",
                "json",
                "--report-json-path",
                str(report),
                "--no-color",
            ],
            cwd=tmp_path,  # nothing of the run is written into the checkout
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": "tests.support.schema_fuzz_hooks",
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
            },
            capture_output=True,
            text=True,
            timeout=SECONDS,
        )
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
    # Failures quote their bodies (X-rays included): lines cut short, the end kept.
    output = "\n".join(line[:300] for line in (run.stdout + run.stderr).splitlines())[-30_000:]
    assert report.exists(), output
    result = json.loads(report.read_text())
    cases = result["test_cases"]
    links = re.search(r"API Links:\s*(.*)", output)
    print(
        f"schemathesis {result['schemathesis_version']}: "
        f"{result['operations']['tested']} operations, {cases['generated']} test cases, "
        f"{cases['unique_failures']} failures, {len(result['errors'])} errors, "
        f"phases { ({k: v['status'] for k, v in result['phases'].items()}) }, "
        f"stateful links {links.group(1).strip() if links else '?'}"
    )
    assert result["operations"]["tested"] == result["operations"]["total"] >= 25, output
    assert cases["generated"] >= 500, output
    assert result["failures"] == [] and result["errors"] == [], output
    assert run.returncode == 0, output
    for phase in ("coverage", "fuzzing", "stateful"):
        assert result["phases"][phase]["status"] == "success", (phase, output)
    # The stateful phase reached stored studies: predictions succeeded and were followed.
    assert 'route="/api/v1/studies/{study_id}",status="200"' in metrics, output
    assert 'route="/api/v1/studies/{study_id}",status="204"' in metrics, output
    # No 5xx but the documented ones: readiness, and the PACS routes without a PACS.
    unexpected = [
        m
        for m in metrics.splitlines()
        if 'status="5' in m
        and "/health/" not in m
        and not (
            'status="503"' in m
            and re.search(r'route="/api/v1/(pacs/pulls|studies/\{study_id\}/pacs)"', m)
        )
    ]
    assert not unexpected, unexpected
