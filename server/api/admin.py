"""Model versions on a running server, for administrators (403 `not_admin` for anyone else;
an API key is refused with 403 `key_scope`):

    GET    /api/v1/admin/models                     installed versions, engines, rollout
    POST   /api/v1/admin/models/{version}/activate  serve another version, without downtime
    PUT    /api/v1/admin/rollout                    start or change a canary or shadow
    DELETE /api/v1/admin/rollout                    drop the candidate
    POST   /api/v1/admin/rollout/promote            the candidate becomes the served version
    GET    /api/v1/admin/rollout/report             how the candidate compares
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import delete, get, post, put
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from server.api.deps import AuthDep, ServiceDep
from server.api.openapi import SIGNED_IN, SIGNED_IN_CHANGE, SIGNED_IN_ONLY, errors
from server.service import Service
from server.service.lifecycle import ModelsState

TAGS = ["administration"]
Version = Annotated[str, Meta(min_length=1, max_length=200)]


class InstalledVersionOut(msgspec.Struct):
    version: str
    created: str
    thresholds_source: str
    calibrated: bool
    in_repository: bool  # the repository's manifest: what a restart serves
    role: Literal["primary", "canary", "shadow", "retiring"] | None


class EngineOut(msgspec.Struct):
    version: str
    role: Literal["primary", "canary", "shadow", "retiring"]
    provider: str
    backend: str
    precision: str
    in_flight: int


class RolloutOut(msgspec.Struct):
    mode: Literal["canary", "shadow"]
    version: str
    fraction: float | None


class ModelsAdminOut(msgspec.Struct):
    primary: str
    installed: list[InstalledVersionOut]
    engines: list[EngineOut]
    rollout: RolloutOut | None
    changing: str | None


class ActivatedOut(msgspec.Struct):
    version: str
    changed: bool  # false: it was served already
    models: ModelsAdminOut


class RolloutIn(msgspec.Struct, forbid_unknown_fields=True):
    mode: Literal["canary", "shadow"]
    version: Version
    # A canary's share of the analyses; none: CHEXRAY_CANARY_FRACTION (0.05).
    fraction: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None


class FindingAgreementOut(msgspec.Struct):
    finding: str
    mean_abs_difference: float | None
    call_agreement: float | None


class LatencyOut(msgspec.Struct):
    version: str
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float


class RolloutReportOut(msgspec.Struct):
    mode: Literal["canary", "shadow"]
    primary: str
    candidate: str
    fraction: float | None
    since: str
    answers: dict[str, int]
    mirrored: int
    compared: int
    shed: int
    failed: int
    pending: int
    findings: list[FindingAgreementOut]
    call_agreement: float | None
    latency: list[LatencyOut]
    note: str


def models_out(state: ModelsState) -> ModelsAdminOut:
    r = state.rollout
    return ModelsAdminOut(
        primary=state.primary,
        installed=[
            msgspec.convert(v, InstalledVersionOut, from_attributes=True) for v in state.installed
        ],
        engines=[msgspec.convert(e, EngineOut, from_attributes=True) for e in state.engines],
        rollout=None if r is None else RolloutOut(r.mode, r.version, r.fraction),
        changing=state.changing,
    )


async def _models(service: Service, auth) -> ModelsAdminOut:
    return models_out(await service.lifecycle.state(auth))


@get("/api/v1/admin/models", tags=TAGS, security=SIGNED_IN_ONLY, responses=errors(*SIGNED_IN))
async def admin_models(auth: AuthDep, service: ServiceDep) -> ModelsAdminOut:
    """The versions installed in the model repository, the engines loaded (the primary
    answers, a canary or shadow candidate beside it, one retiring after a switch) and the
    rollout, if any."""
    return await _models(service, auth)


@post(
    "/api/v1/admin/models/{version:str}/activate",
    status_code=200,
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN_CHANGE, 404, 409),
)
async def activate_model(
    auth: AuthDep, service: ServiceDep, version: FromPath[Version]
) -> ActivatedOut:
    """Serve `version` from now on, without downtime: its engine is loaded, warmed up and
    checked (the precision gate, as at start-up) while the current one serves; then new
    analyses go to it, those already admitted finish on the old one, which is then stopped.
    The repository's manifest names it afterwards, so a restart serves it too. 409
    `version_refused` (with the reason) when it cannot be served: nothing changes; 404
    `unknown_model_version`."""
    changed = await service.lifecycle.activate(auth, version)
    return ActivatedOut(version, changed, await _models(service, auth))


@put(
    "/api/v1/admin/rollout",
    status_code=200,
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN_CHANGE, 404, 409),
)
async def start_rollout(
    auth: AuthDep, service: ServiceDep, data: JSONBody[RolloutIn]
) -> ModelsAdminOut:
    """Load `version` beside the served one: `canary` answers `fraction` (0..1) of the
    analyses that name no version; `shadow` runs every answered analysis again on the same
    decoded image, in the background, and only compares (shed when the candidate is busy;
    answers never wait for it). A rollout of the same version changes mode and fraction; one
    of another version is replaced."""
    await service.lifecycle.start_rollout(auth, data.mode, data.version, data.fraction)
    return await _models(service, auth)


@delete(
    "/api/v1/admin/rollout",
    status_code=200,
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    responses=errors(*SIGNED_IN_CHANGE, 404, 409),
)
async def end_rollout(auth: AuthDep, service: ServiceDep) -> ModelsAdminOut:
    """Drop the candidate: what it admitted finishes, then it is stopped. 404 `no_rollout`."""
    await service.lifecycle.end_rollout(auth)
    return await _models(service, auth)


@post(
    "/api/v1/admin/rollout/promote",
    status_code=200,
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    responses=errors(*SIGNED_IN_CHANGE, 404, 409),
)
async def promote_rollout(auth: AuthDep, service: ServiceDep) -> ActivatedOut:
    """The candidate becomes the served version, as activating it does (its engine is
    already warm); the rollout ends. 404 `no_rollout`."""
    version = await service.lifecycle.promote(auth)
    return ActivatedOut(version, True, await _models(service, auth))


@get(
    "/api/v1/admin/rollout/report",
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    responses=errors(*SIGNED_IN, 404),
)
async def rollout_report(auth: AuthDep, service: ServiceDep) -> RolloutReportOut:
    """How the candidate compares with the served version since the rollout started (or
    the served version last changed): per finding, the mean absolute difference of the
    probabilities and the share of equal calls on the same images (shadow: every mirrored
    image; a canary answers each image with one version, so none pair), counts, and each
    version's engine latency percentiles (decode, resize, queue and batch)."""
    report = await service.lifecycle.report(auth)
    return msgspec.convert(report, RolloutReportOut, from_attributes=True)


ROUTES = [
    admin_models,
    activate_model,
    start_rollout,
    end_rollout,
    promote_rollout,
    rollout_report,
]
