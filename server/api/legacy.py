"""The legacy application's REST API under /api/chexray/, so its clients (and its Angular
app) keep working.

Same paths, request fields and response fields; `Authorization: Token <key>` accepted.
Where the legacy application was unsafe CheXray differs (see README): errors carry 4xx
statuses, only the owner sees a study, anonymous uploads belong to nobody.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from server.api.accounts import guard_register, guard_sign_in
from server.api.auth import (
    API_KEYS,
    audit_context,
    client_key,
    provide_principal,
    require_caller,
)
from server.api.deps import AuthDep, LimiterDep, PrincipalDep, ServiceDep, SettingsDep
from server.api.errors import ApiError
from server.api.openapi import (
    INFERENCE,
    SIGNED_IN,
    SIGNED_IN_CHANGE,
    SIGNED_IN_ONLY,
    SIGNED_IN_OR_KEY,
    UPLOAD,
    UploadOperation,
    errors,
)
from server.api.schemas import Password, Username
from server.api.studies import finding_of, png, user_id
from server.api.uploads import read_upload
from server.service import FINDINGS, AnalyseOptions, Principal, Result, heatmap_file


# The same field rules as /api/v1 (the legacy application had none): a username of 1-150
# word characters, passwords of at most 1024 characters.
class SignupIn(msgspec.Struct):
    username: Username
    password: Password
    password2: Password


class SignupOut(msgspec.Struct):
    response: str
    username: str
    token: str


class LegacyLoginIn(msgspec.Struct):
    username: Annotated[str, Meta(max_length=150)]
    password: Password


class LegacyLoginOut(msgspec.Struct):
    userid: int
    username: str
    token: str


class XrayIn(msgspec.Struct):
    xray_id: Annotated[str, Meta(max_length=64)]


class LegacyXray(msgspec.Struct, omit_defaults=True):
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
    # Added for anonymous uploads only (absent otherwise): when the study is deleted, and
    # the one-time secret that deletes it sooner (DELETE /api/v1/studies/{id} with header
    # X-Delete-Token).
    expires_at: dt.datetime | None = None
    delete_token: str | None = None


class LegacyUser(msgspec.Struct):
    userid: int
    username: str
    pastxrays: list[LegacyXray]


def legacy_xray(request: Request, r: Result, delete_token: str | None = None) -> LegacyXray:
    """heatmap_image: the most probable finding's map; newcomp_image: the findings called
    present, combined (the legacy application's composite)."""
    assert r.id is not None
    top = FINDINGS[max(range(len(FINDINGS)), key=lambda i: r.probabilities[i])]
    calls = [1.0 if c else 0.0 for c in r.calls]

    def media(file_name: str) -> str:
        return request.app.route_reverse("legacy_media", study_id=r.id, file_name=file_name)

    return LegacyXray(
        id=r.id,
        title=r.title,
        image=media("image.png"),
        date_posted=r.created_at,
        userperson=r.owner_id,
        heatmap_image=media(heatmap_file(top)),
        newcomp_image=media(heatmap_file(None)),
        atelectasis=calls[0],
        cardiomegaly=calls[1],
        consolidation=calls[2],
        edema=calls[3],
        pleural_effusion=calls[4],
        expires_at=r.expires_at,
        delete_token=delete_token,
    )


TAGS = ["legacy compatibility"]


@post(
    "/api/chexray/signup/",
    status_code=200,
    tags=TAGS,
    responses=errors(400, 409, 413, 415, 422, 429, 503),
)
async def signup(
    request: Request, data: JSONBody[SignupIn], service: ServiceDep, limiter: LimiterDep
) -> SignupOut:
    async with guard_register(limiter, request, data.username):
        user = await service.accounts.register(data.username, data.password, data.password2)
    raw, _ = await service.accounts.issue_token(user, "bearer")
    return SignupOut("Successfully registered a new user.", user.username, raw)


@post(
    "/api/chexray/login/",
    status_code=200,
    tags=TAGS,
    responses=errors(400, 401, 413, 415, 429, 503),
)
async def legacy_login(
    request: Request, data: JSONBody[LegacyLoginIn], service: ServiceDep, limiter: LimiterDep
) -> LegacyLoginOut:
    async with guard_sign_in(limiter, request, data.username):
        user, raw, _ = await service.accounts.sign_in(data.username, data.password, "bearer")
    return LegacyLoginOut(user.id, user.username, raw)


@get("/api/chexray/user/", tags=TAGS, security=SIGNED_IN_ONLY, responses=errors(*SIGNED_IN))
async def legacy_user(request: Request, auth: AuthDep, service: ServiceDep) -> LegacyUser:
    results, _ = await service.predictions.history(auth.user_id, 1, 10_000, None)
    return LegacyUser(auth.user_id, auth.user.username, [legacy_xray(request, r) for r in results])


@post(
    "/api/chexray/xray/",
    status_code=200,
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN_CHANGE, 404, 413),
)
async def legacy_xray_detail(
    request: Request, data: JSONBody[XrayIn], auth: AuthDep, service: ServiceDep
) -> LegacyXray:
    """Only the owner's studies (the legacy application answered for any id)."""
    return legacy_xray(request, await service.predictions.result(data.xray_id, auth.user_id))


async def _upload(
    request: Request, service: ServiceDep, owner_id: int | None, caller: Principal | None
) -> LegacyXray:
    audit = audit_context(request, caller, "legacy")
    with service.predictions.admit(audit=audit):
        data, title = await read_upload(request)
        options = AnalyseOptions(
            title=title, owner_id=owner_id, store=True, client=client_key(request), audit=audit
        )
        analysis = await service.predictions.analyse(data, options)
    return legacy_xray(request, analysis.result, analysis.delete_token)


@post(
    "/api/chexray/upload/",
    status_code=200,
    tags=TAGS,
    operation_class=UploadOperation,
    security=SIGNED_IN_OR_KEY,
    opt=API_KEYS,
    responses=errors(*UPLOAD, 401, 403, 507),
)
async def legacy_upload(request: Request, auth: AuthDep, service: ServiceDep) -> LegacyXray:
    """Stored in the caller's history (an API key's owner's too: the legacy upload always
    keeps the study)."""
    return await _upload(request, service, auth.user_id, auth)


@post(
    "/api/chexray/anonupload/",
    status_code=200,
    tags=TAGS,
    operation_class=UploadOperation,
    security=INFERENCE,
    opt=API_KEYS,
    responses=errors(*UPLOAD, 401, 403, 429, 507),
)
async def legacy_anonupload(
    request: Request, service: ServiceDep, settings: SettingsDep
) -> LegacyXray:
    """Stored without an owner (the legacy application filed these under user 1), reachable
    by id, for a limited time (`expires_at`); `delete_token` deletes it sooner. With
    CHEXRAY_REQUIRE_AUTH only for callers with a valid credential (the study still has no
    owner); without it, credentials are not read here, as before."""
    caller = None
    if settings.require_auth:
        caller = await provide_principal(request, service)
        require_caller(caller, settings)
    return await _upload(request, service, None, caller)


@get(
    "/media/{study_id:str}/{file_name:str}",
    tags=TAGS,
    media_type="image/png",
    include_in_schema=False,
    name="legacy_media",
)
async def legacy_media(
    study_id: FromPath[str],
    file_name: FromPath[str],
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response[bytes]:
    """The legacy /media/ URLs, with the same ownership check as the API."""
    study = await service.predictions.study(study_id, user_id(principal))
    name = file_name
    if name == "image.png":
        return png(await service.predictions.image(study))
    if name == "heatmap.png":
        return png(await service.predictions.heatmap(study, None))
    if name.startswith("heatmap-") and name.endswith(".png"):
        return png(await service.predictions.heatmap(study, finding_of(name[8:-4])))
    raise ApiError(404, "not_found", "no such file")
