"""The seed's REST API under /api/chexray/, so its clients (and its Angular app) keep working.

Same paths, request fields and response fields; `Authorization: Token <key>` accepted.
Where the seed was unsafe CheXray differs (see README): errors carry 4xx statuses, only
the owner sees a study, anonymous uploads belong to nobody.
"""

from __future__ import annotations

import datetime as dt

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody
from sqlmodel import Session

from server.api.accounts import check_new_password, issue, rate_limit, register_user, sign_in
from server.api.analysis import analyse, slug
from server.api.deps import AuthDep, DbDep, EngineDep, LimiterDep, MediaDep, SettingsDep
from server.api.studies import load_study
from server.api.uploads import read_upload
from server.runtime.manifest import FINDINGS
from server.store import studies
from server.store.models import Study


class SignupIn(msgspec.Struct):
    username: str
    password: str
    password2: str


class SignupOut(msgspec.Struct):
    response: str
    username: str
    token: str


class SeedLoginIn(msgspec.Struct):
    username: str
    password: str


class SeedLoginOut(msgspec.Struct):
    userid: int
    username: str
    token: str


class XrayIn(msgspec.Struct):
    xray_id: str


class SeedXray(msgspec.Struct):
    id: str
    title: str
    image: str
    date_posted: dt.datetime
    userperson: int | None
    heatmap_image: str
    newcomp_image: str
    atelectasis: float
    cardiomegaly: float
    consolidation: float
    edema: float
    pleural_effusion: float


class SeedUser(msgspec.Struct):
    userid: int
    username: str
    pastxrays: list[SeedXray]


def seed_xray(study: Study) -> SeedXray:
    """heatmap_image: the most probable finding's map; newcomp_image: the findings called
    present, combined (the seed's composite)."""
    top = FINDINGS[max(range(len(FINDINGS)), key=lambda i: study.probabilities[i])]
    calls = [1.0 if c else 0.0 for c in study.calls]
    return SeedXray(
        id=study.id,
        title=study.title,
        image=f"/media/{study.id}/image.png",
        date_posted=study.created_at,
        userperson=study.owner_id,
        heatmap_image=f"/media/{study.id}/heatmap-{slug(top)}.png",
        newcomp_image=f"/media/{study.id}/heatmap.png",
        atelectasis=calls[0],
        cardiomegaly=calls[1],
        consolidation=calls[2],
        edema=calls[3],
        pleural_effusion=calls[4],
    )


@post("/api/chexray/signup/", status_code=200, tags=["seed compatibility"])
async def signup(
    request: Request,
    data: JSONBody[SignupIn],
    db: DbDep,
    limiter: LimiterDep,
    settings: SettingsDep,
) -> SignupOut:
    rate_limit(limiter, request, data.username)
    check_new_password(data.password, data.password2, data.username)
    user = await db.call(register_user, data.username, data.password, None, "")
    raw, _ = await db.call(issue, user, settings, "bearer")
    return SignupOut("Successfully registered a new user.", user.username, raw)


@post("/api/chexray/login/", status_code=200, tags=["seed compatibility"])
async def seed_login(
    request: Request,
    data: JSONBody[SeedLoginIn],
    db: DbDep,
    limiter: LimiterDep,
    settings: SettingsDep,
) -> SeedLoginOut:
    rate_limit(limiter, request, data.username)
    user, raw, _ = await db.call(sign_in, data.username, data.password, settings, "bearer")
    return SeedLoginOut(user.id, user.username, raw)


def _history(s: Session, user_id: int) -> list[Study]:
    rows, _ = studies.list_studies(s, user_id, 1, 10_000, None)
    return rows


@get("/api/chexray/user/", tags=["seed compatibility"])
async def seed_user(auth: AuthDep, db: DbDep) -> SeedUser:
    rows = await db.call(_history, auth.user_id)
    return SeedUser(auth.user_id, auth.user.username, [seed_xray(r) for r in rows])


@post("/api/chexray/xray/", status_code=200, tags=["seed compatibility"])
async def seed_xray_detail(data: JSONBody[XrayIn], auth: AuthDep, db: DbDep) -> SeedXray:
    """Only the owner's studies (the seed answered for any id)."""
    return seed_xray(await load_study(db, data.xray_id, auth))


@post("/api/chexray/upload/", status_code=200, tags=["seed compatibility"])
async def seed_upload(
    request: Request, auth: AuthDep, engine: EngineDep, db: DbDep, media: MediaDep
) -> SeedXray:
    data, title = await read_upload(request)
    _, study = await analyse(
        engine,
        db,
        media,
        data,
        title=title,
        owner_id=auth.user_id,
        store=True,
        inline_heatmap=False,
    )
    return seed_xray(study)


@post("/api/chexray/anonupload/", status_code=200, tags=["seed compatibility"])
async def seed_anonupload(
    request: Request, engine: EngineDep, db: DbDep, media: MediaDep
) -> SeedXray:
    """Stored without an owner (the seed filed these under user 1), reachable by id."""
    data, title = await read_upload(request)
    _, study = await analyse(
        engine, db, media, data, title=title, owner_id=None, store=True, inline_heatmap=False
    )
    return seed_xray(study)
