"""History: the signed-in user's studies, their images and heatmaps. Owner only: another
user's study answers 404 exactly as a missing one does."""

from __future__ import annotations

import math

from litestar import Response, delete, get
from litestar.params import FromPath, Parameter
from sqlmodel import Session

from server.api.analysis import SLUGS, present, slug, study_heatmap, study_out, urls
from server.api.auth import Principal
from server.api.deps import AuthDep, DbDep, EngineDep, MediaDep, PrincipalDep
from server.api.errors import ApiError, not_found
from server.api.schemas import StudyOut, StudyPage, StudySummary
from server.runtime.engine import Engine
from server.runtime.manifest import FINDINGS
from server.store import studies
from server.store.db import Database
from server.store.media import MediaStore
from server.store.models import Study

PNG = "image/png"
# Media of a study never changes; only its owner may fetch it.
PRIVATE = {"Cache-Control": "private, max-age=3600"}


def finding_of(name: str) -> str:
    key = slug(name).replace("-", "_")
    if key not in SLUGS:
        raise ApiError(
            404, "unknown_finding", f"unknown finding {name!r}", {"findings": list(SLUGS)}
        )
    return SLUGS[key]


async def load_study(db: Database, study_id: str, principal: Principal | None) -> Study:
    study = await db.call(studies.get_study, study_id, principal.user_id if principal else None)
    if study is None:
        raise not_found()
    return study


@get("/api/v1/studies", tags=["studies"])
async def list_studies(
    auth: AuthDep,
    db: DbDep,
    page: int = Parameter(default=1, ge=1),
    per_page: int = Parameter(default=20, ge=1, le=100),
    finding: str | None = Parameter(default=None, description="only studies where it is present"),
) -> StudyPage:
    """The signed-in user's studies, newest first."""
    wanted = finding_of(finding) if finding else None
    rows, total = await db.call(studies.list_studies, auth.user_id, page, per_page, wanted)
    items = [
        StudySummary(
            r.id,
            r.title,
            r.created_at,
            present(r.calls),
            dict(zip(FINDINGS, r.probabilities, strict=True)),
            urls(r.id),
        )
        for r in rows
    ]
    return StudyPage(items, page, per_page, total, max(1, math.ceil(total / per_page)))


@get("/api/v1/studies/{study_id:str}", tags=["studies"])
async def get_study(study_id: FromPath[str], principal: PrincipalDep, db: DbDep) -> StudyOut:
    """One study: its owner's, or an anonymous one by its id."""
    return study_out(await load_study(db, study_id, principal), stored=True)


def _delete(s: Session, study: Study) -> None:
    studies.delete_study(s, s.merge(study))


@delete("/api/v1/studies/{study_id:str}", status_code=204, tags=["studies"])
async def delete_study(study_id: FromPath[str], auth: AuthDep, db: DbDep, media: MediaDep) -> None:
    study = await load_study(db, study_id, auth)
    if study.owner_id is None:
        raise not_found()  # anonymous studies have no owner who could delete them
    await db.call(_delete, study)
    await db.run(media.delete_study, study.id)


async def image_response(db: Database, media: MediaStore, study: Study) -> Response[bytes]:
    data = await db.run(media.read, study.id, "image.png")
    if data is None:
        raise not_found("image")
    return Response(data, media_type=PNG, headers=PRIVATE)


async def heatmap_response(
    engine: Engine, db: Database, media: MediaStore, study: Study, finding: str | None
) -> Response[bytes]:
    try:
        data = await study_heatmap(engine, db, media, study, finding)
    except FileNotFoundError:
        raise not_found("image") from None
    return Response(data, media_type=PNG, headers=PRIVATE)


@get("/api/v1/studies/{study_id:str}/image", tags=["studies"], media_type=PNG)
async def get_image(
    study_id: FromPath[str], principal: PrincipalDep, db: DbDep, media: MediaDep
) -> Response[bytes]:
    """The X-ray as decoded (PNG, 8-bit grey; DICOMs are never stored as DICOM)."""
    return await image_response(db, media, await load_study(db, study_id, principal))


@get("/api/v1/studies/{study_id:str}/heatmap", tags=["studies"], media_type=PNG)
async def get_heatmap(
    study_id: FromPath[str], principal: PrincipalDep, db: DbDep, media: MediaDep, engine: EngineDep
) -> Response[bytes]:
    """The findings called present, combined (the most probable one when none is)."""
    study = await load_study(db, study_id, principal)
    return await heatmap_response(engine, db, media, study, None)


@get("/api/v1/studies/{study_id:str}/heatmap/{finding:str}", tags=["studies"], media_type=PNG)
async def get_finding_heatmap(
    study_id: FromPath[str],
    finding: FromPath[str],
    principal: PrincipalDep,
    db: DbDep,
    media: MediaDep,
    engine: EngineDep,
) -> Response[bytes]:
    """One finding's heatmap; `finding` like `pleural_effusion`."""
    name = finding_of(finding)
    study = await load_study(db, study_id, principal)
    return await heatmap_response(engine, db, media, study, name)


@get("/media/{study_id:str}/{name:str}", tags=["studies"], media_type=PNG, include_in_schema=False)
async def get_media(
    study_id: FromPath[str],
    name: FromPath[str],
    principal: PrincipalDep,
    db: DbDep,
    media: MediaDep,
    engine: EngineDep,
) -> Response[bytes]:
    """The seed's /media/ URLs, with the same ownership check as the API."""
    study = await load_study(db, study_id, principal)
    if name == "image.png":
        return await image_response(db, media, study)
    if name == "heatmap.png":
        return await heatmap_response(engine, db, media, study, None)
    if name.startswith("heatmap-") and name.endswith(".png"):
        return await heatmap_response(engine, db, media, study, finding_of(name[8:-4]))
    raise not_found("file")
