"""History: the signed-in user's studies, their images and heatmaps. Owner only: another
user's study answers 404 exactly as a missing one does."""

from __future__ import annotations

import math
from typing import Annotated

from litestar import Request, Response, delete, get, post
from litestar.params import FromPath, HeaderParameter, Parameter

from server.api.auth import provide_auth
from server.api.deps import AuthDep, PrincipalDep, ServiceDep
from server.api.errors import ApiError
from server.api.openapi import ANYONE, SIGNED_IN, SIGNED_IN_CHANGE, SIGNED_IN_ONLY, errors
from server.api.responses import pacs_out, study_out, study_summary
from server.api.schemas import PacsTransferOut, StudyOut, StudyPage
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
    """One study: its owner's, or an anonymous one by its id; with where its DICOM results
    stand with the PACS, when they were queued."""
    result = await service.predictions.result(study_id, user_id(principal))
    pacs = await service.pacs.status(study_id) if result.image.dicom is not None else None
    return study_out(request, result, pacs=pacs)


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


DICOM = "application/dicom"


def dicom_file(data: bytes, name: str) -> Response[bytes]:
    headers = {**PRIVATE, "Content-Disposition": f'attachment; filename="{name}"'}
    return Response(data, media_type=DICOM, headers=headers)


@get(
    "/api/v1/studies/{study_id:str}/dicom/sr",
    tags=["studies"],
    media_type=DICOM,
    name="study_dicom_sr",
    security=ANYONE,
    responses=errors(400, *SIGNED_IN, 404, 409),
)
async def get_dicom_sr(
    study_id: FromPath[str], principal: PrincipalDep, service: ServiceDep
) -> Response[bytes]:
    """The study's results as a DICOM Structured Report (TID 1500 Measurement Report) in
    the source's study: per finding its SNOMED CT code, probability, threshold and
    present/absent call. 409 `not_dicom` for a study not analysed from a DICOM."""
    study = await service.predictions.study(study_id, user_id(principal))
    return dicom_file(await service.predictions.dicom_sr(study), f"chexray-sr-{study_id}.dcm")


@get(
    "/api/v1/studies/{study_id:str}/dicom/heatmap/{finding:str}",
    tags=["studies"],
    media_type=DICOM,
    name="study_dicom_heatmap",
    security=ANYONE,
    responses=errors(400, *SIGNED_IN, 404, 409),
)
async def get_dicom_heatmap(
    study_id: FromPath[str], finding: FromPath[str], principal: PrincipalDep, service: ServiceDep
) -> Response[bytes]:
    """One finding's heatmap over the X-ray as a DICOM object in the source's study,
    referencing the source image. 409 `not_dicom` for a study not analysed from a DICOM."""
    name = finding_of(finding)
    study = await service.predictions.study(study_id, user_id(principal))
    (data,) = await service.predictions.dicom_heatmaps(study, [name])
    return dicom_file(data, f"chexray-heatmap-{slug(name)}-{study_id}.dcm")


@get(
    "/api/v1/studies/{study_id:str}/pacs",
    tags=["studies", "pacs"],
    name="study_pacs",
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN, 404),
)
async def get_study_pacs(
    study_id: FromPath[str], auth: AuthDep, service: ServiceDep
) -> PacsTransferOut:
    """Where the study's DICOM results stand with the PACS; 404 `not_queued` when they were
    never queued (no PACS configured, or not analysed from a DICOM)."""
    study = await service.predictions.study(study_id, auth.user_id)
    transfer = await service.pacs.status(study.id)
    if transfer is None:
        raise ApiError(
            404,
            "not_queued",
            "this study's results were never queued for the PACS: it was not analysed from a "
            "DICOM, or no PACS was configured (CHEXRAY_PACS_URL) when it was",
        )
    return pacs_out(transfer)


@post(
    "/api/v1/studies/{study_id:str}/pacs",
    status_code=202,
    tags=["studies", "pacs"],
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN_CHANGE, 404, 409, 503),
)
async def send_study_to_pacs(
    study_id: FromPath[str], auth: AuthDep, service: ServiceDep
) -> PacsTransferOut:
    """Send the study's DICOM results to the PACS (again): queued now, answered 202 with
    the transfer's state. 409 `not_dicom` for a study not analysed from a DICOM; 503
    `pacs_not_configured` without a PACS."""
    study = await service.predictions.study(study_id, auth.user_id)
    await service.predictions.require_dicom(study)  # 409 not_dicom before anything is queued
    return pacs_out(await service.pacs.resend(study))
