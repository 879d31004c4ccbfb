"""History: the signed-in user's studies, their images and heatmaps. Owner only: another
user's study answers 404 exactly as a missing one does."""

from __future__ import annotations

import math
from typing import Annotated

from litestar import Request, Response, delete, get
from litestar.params import FromPath, HeaderParameter, Parameter

from server.api.auth import provide_auth
from server.api.deps import AuthDep, PrincipalDep, ServiceDep
from server.api.errors import ApiError
from server.api.openapi import ANYONE, SIGNED_IN, SIGNED_IN_CHANGE, SIGNED_IN_ONLY, errors
from server.api.responses import study_out, study_summary
from server.api.schemas import StudyOut, StudyPage
from server.service import FINDINGS, Principal, finding_for, slug

PNG = "image/png"
# X-rays and heatmaps are health data: no cache, shared or private, keeps a copy.
PRIVATE = {"Cache-Control": "private, no-store"}


def finding_of(name: str) -> str:
    finding = finding_for(name)
    if finding is None:
        raise ApiError(
            404,
            "unknown_finding",
            f"unknown finding {name!r}",
            {"findings": [slug(f) for f in FINDINGS]},
        )
    return finding


def user_id(principal: Principal | None) -> int | None:
    return principal.user_id if principal else None


def png(data: bytes) -> Response[bytes]:
    return Response(data, media_type=PNG, headers=PRIVATE)


@get(
    "/api/v1/studies",
    tags=["studies"],
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN, 404),
)
async def list_studies(
    request: Request,
    auth: AuthDep,
    service: ServiceDep,
    page: int = Parameter(default=1, ge=1, le=1_000_000),
    per_page: int = Parameter(default=20, ge=1, le=100),
    finding: str | None = Parameter(default=None, description="only studies where it is present"),
) -> StudyPage:
    """The signed-in user's studies, newest first."""
    wanted = finding_of(finding) if finding else None
    results, total = await service.predictions.history(auth.user_id, page, per_page, wanted)
    return StudyPage(
        [study_summary(request, r) for r in results],
        page,
        per_page,
        total,
        max(1, math.ceil(total / per_page)),
    )


@get(
    "/api/v1/studies/{study_id:str}",
    tags=["studies"],
    name="study",
    security=ANYONE,
    responses=errors(400, *SIGNED_IN, 404),
)
async def get_study(
    request: Request, study_id: FromPath[str], principal: PrincipalDep, service: ServiceDep
) -> StudyOut:
    """One study: its owner's, or an anonymous one by its id."""
    return study_out(request, await service.predictions.result(study_id, user_id(principal)))


@delete(
    "/api/v1/studies/{study_id:str}",
    status_code=204,
    tags=["studies"],
    # Signed in (the owner), or anyone holding an anonymous study's X-Delete-Token.
    security=ANYONE,
    responses=errors(400, *SIGNED_IN_CHANGE, 404),
)
async def delete_study(
    study_id: FromPath[str],
    principal: PrincipalDep,
    service: ServiceDep,
    delete_token: Annotated[
        str | None,
        HeaderParameter(
            name="X-Delete-Token",
            max_length=128,
            description="an anonymous study's deletion secret, from the answer that created it",
        ),
    ] = None,
) -> None:
    """Delete a study: the owner's, or an anonymous one with its `X-Delete-Token`."""
    if delete_token is None:
        principal = await provide_auth(principal)  # 401 when nobody is signed in
    await service.predictions.delete(study_id, user_id(principal), delete_token)


@get(
    "/api/v1/studies/{study_id:str}/image",
    tags=["studies"],
    media_type=PNG,
    name="study_image",
    security=ANYONE,
    responses=errors(400, *SIGNED_IN, 404),
)
async def get_image(
    study_id: FromPath[str], principal: PrincipalDep, service: ServiceDep
) -> Response[bytes]:
    """The X-ray as decoded (PNG, 8-bit grey; DICOMs are never stored as DICOM)."""
    study = await service.predictions.study(study_id, user_id(principal))
    return png(await service.predictions.image(study))


@get(
    "/api/v1/studies/{study_id:str}/heatmap",
    tags=["studies"],
    media_type=PNG,
    name="study_heatmap",
    security=ANYONE,
    responses=errors(400, *SIGNED_IN, 404),
)
async def get_heatmap(
    study_id: FromPath[str], principal: PrincipalDep, service: ServiceDep
) -> Response[bytes]:
    """The findings called present, combined (the most probable one when none is)."""
    study = await service.predictions.study(study_id, user_id(principal))
    return png(await service.predictions.heatmap(study, None))


@get(
    "/api/v1/studies/{study_id:str}/heatmap/{finding:str}",
    tags=["studies"],
    media_type=PNG,
    name="study_finding_heatmap",
    security=ANYONE,
    responses=errors(400, *SIGNED_IN, 404),
)
async def get_finding_heatmap(
    study_id: FromPath[str], finding: FromPath[str], principal: PrincipalDep, service: ServiceDep
) -> Response[bytes]:
    """One finding's heatmap; `finding` like `pleural_effusion`."""
    name = finding_of(finding)
    study = await service.predictions.study(study_id, user_id(principal))
    return png(await service.predictions.heatmap(study, name))
