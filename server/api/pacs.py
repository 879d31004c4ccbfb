"""Pulling from the PACS: POST /api/v1/pacs/pulls fetches a study (or one series) by
WADO-RS and analyses each instance, as a STOW-RS request to CheXray would; the results go
back to the PACS. Signed-in callers and API keys."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Request, post
from litestar.params import JSONBody
from msgspec import Meta

from server.api.auth import API_KEYS, audit_context, client_key, provide_auth
from server.api.deps import PrincipalDep, ServiceDep
from server.api.openapi import SIGNED_IN_OR_KEY, errors
from server.service import InstanceOutcome

Uid = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$")]


class PullIn(msgspec.Struct, forbid_unknown_fields=True):
    study_uid: Uid
    series_uid: Uid | None = None
    force: bool = False  # analyse instances outside the intended use too, with a warning


class PulledInstance(msgspec.Struct):
    """One instance of the pulled study: analysed into `study_id` (its results queued for
    the PACS), or refused with `code` and `message` (e.g. `unsupported_sop_class` for the
    study's reports and CheXray's own results)."""

    sop_instance_uid: str
    sop_class_uid: str
    analysed: bool
    study_id: str | None = None
    study_url: str | None = None
    code: str | None = None
    message: str | None = None
    warnings: list[str] = []


class PullOut(msgspec.Struct):
    study_uid: str
    series_uid: str | None
    instances: list[PulledInstance]
    analysed: int
    refused: int


def pulled(request: Request, o: InstanceOutcome) -> PulledInstance:
    url = request.app.route_reverse("study", study_id=o.study_id) if o.study_id else None
    return PulledInstance(
        o.sop_instance_uid,
        o.sop_class_uid,
        o.stored,
        o.study_id,
        url,
        o.code,
        o.message,
        list(o.warnings),
    )


@post(
    "/api/v1/pacs/pulls",
    status_code=200,
    tags=["pacs"],
    security=SIGNED_IN_OR_KEY,
    opt=API_KEYS,
    responses=errors(400, 401, 403, 404, 502, 503),
)
async def pull_from_pacs(
    request: Request, data: JSONBody[PullIn], service: ServiceDep, principal: PrincipalDep
) -> PullOut:
    """Fetch a study (or one of its series) from the PACS by WADO-RS and analyse every
    radiograph in it into the caller's history; each result goes back to the PACS.
    Instances that are not analysed (other SOP classes, outside the intended use, damaged)
    are listed with the reason. 502 when the PACS refuses, 503 when it cannot be reached
    or none is configured, 404 when it has no such study."""
    auth = await provide_auth(principal)
    outcomes = await service.pacs.pull(
        data.study_uid,
        data.series_uid,
        auth.user_id,
        data.force,
        client_key(request),
        audit_context(request, auth, "pacs-pull"),
    )
    items = [pulled(request, o) for o in outcomes]
    analysed = sum(i.analysed for i in items)
    return PullOut(data.study_uid, data.series_uid, items, analysed, len(items) - analysed)
