"""The audit log for administrators: its records as JSON Lines, and the chain's check.

Signed-in administrators only (CHEXRAY_ADMINS; by default the first account): anyone else
gets 403 `not_admin`, an API key 403 `key_scope` (keys are for inference)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec
from litestar import Request, Response, get
from litestar.params import Parameter

from server.api.deps import AuthDep, ServiceDep
from server.api.errors import ApiError
from server.api.openapi import SIGNED_IN, SIGNED_IN_ONLY, errors
from server.service.audit import export_line

TAGS = ["administration"]
NDJSON = "application/x-ndjson"
MAX_LIMIT = 10_000


class AuditVerification(msgspec.Struct):
    """`intact`: every record's hash matches its fields and links to the one before, from
    the anchor (the last record retention deleted; GENESIS, 64 zeros, if none) to the
    head. Otherwise `bad_id`, `bad_time` and `problem` name the first record at fault."""

    intact: bool
    records: int
    first_id: int | None
    last_id: int | None
    last_hash: str
    anchor_id: int
    anchor_hash: str
    bad_id: int | None = None
    bad_time: str | None = None
    problem: str | None = None


@get(
    "/api/v1/admin/audit",
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    media_type=NDJSON,
    responses=errors(400, *SIGNED_IN),
)
async def audit_records(
    request: Request,
    auth: AuthDep,
    service: ServiceDep,
    since: Annotated[dt.datetime | None, Parameter(description="from this time (ISO 8601)")] = None,
    until: Annotated[dt.datetime | None, Parameter(description="before this time")] = None,
    after: Annotated[int, Parameter(ge=0, description="records after this id (paging)")] = 0,
    limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT)] = 1000,
) -> Response[bytes]:
    """Audit records, oldest first, one JSON object per line (the fields of `chexray audit
    export`). At most `limit`; for the next page, pass the last line's `id` as `after`."""
    await service.accounts.require_admin(auth)
    for name in ("since", "until"):
        # The query parser also takes a bare number as a timestamp: only ISO 8601 is meant.
        raw = request.query_params.get(name)
        if raw is not None:
            try:
                dt.datetime.fromisoformat(raw)
            except ValueError:
                raise ApiError(
                    400,
                    "invalid_time",
                    f"{name} must be an ISO 8601 time, e.g. 2026-01-31T00:00:00Z, not {raw!r}",
                    {"field": name},
                ) from None
    rows = await service.audit.page(since, until, after, limit)
    body = "".join(export_line(r) + "\n" for r in rows).encode()
    return Response(body, media_type=NDJSON, headers={"Cache-Control": "no-store"})


@get(
    "/api/v1/admin/audit/verify",
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    responses=errors(*SIGNED_IN),
)
async def verify_audit(auth: AuthDep, service: ServiceDep) -> AuditVerification:
    """Walk the audit log's hash chain: whether it is intact, and if not the first record
    whose hash or link does not match."""
    await service.accounts.require_admin(auth)
    v = await service.audit.verify()
    return msgspec.convert(v.as_dict(), AuditVerification)
