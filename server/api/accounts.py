"""Accounts: register, log in and out, profile, password, account deletion."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import anyio.to_thread
from litestar import Request, Response, delete, get, patch, post
from litestar.params import JSONBody

from server.api.auth import (
    check_sign_in_request,
    clear_session_cookies,
    client_key,
    set_session_cookies,
)
from server.api.deps import AuthDep, LimiterDep, PrincipalDep, ServiceDep, SettingsDep
from server.api.errors import ApiError
from server.api.openapi import (
    ANYONE,
    SIGNED_IN,
    SIGNED_IN_CHANGE,
    SIGNED_IN_ONLY,
    NoContentOperation,
    errors,
)
from server.api.ratelimit import Attempt, Limited, Limits
from server.api.schemas import (
    LoginIn,
    PasswordChange,
    PasswordChanged,
    Profile,
    ProfilePatch,
    RegisterIn,
    SessionOut,
    TokenOut,
)
from server.errors import Unauthenticated
from server.service import Service, User


def too_many(wait: float) -> ApiError:
    seconds = max(1, math.ceil(wait))
    return ApiError(
        429,
        "rate_limited",
        f"too many attempts; try again in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


@asynccontextmanager
async def counted(start: Callable[[], Attempt]) -> AsyncIterator[None]:
    """Run the body as one counted try (server/api/ratelimit.py): 429 if refused; wrong
    credentials end it as a failure, no error as a success, anything else as neither. The
    limits may be counted in the database: their calls run in a worker thread."""
    try:
        attempt = await anyio.to_thread.run_sync(start)
    except Limited as exc:
        raise too_many(exc.retry_after) from None
    try:
        yield
    except Unauthenticated as exc:
        failed = exc.code == "invalid_credentials"
        await _end(attempt.failed if failed else attempt.ended_otherwise)
        raise
    except BaseException:
        await _end(attempt.ended_otherwise)
        raise
    await _end(attempt.succeeded)


async def _end(end: Callable[[], None]) -> None:
    # Shielded: a cancelled request still records how its try ended.
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(end)


def guard_sign_in(
    limits: Limits, request: Request, username: str, cookie: bool = False
) -> AbstractAsyncContextManager[None]:
    """Around every log-in, on both APIs: a JSON body from where it may come
    (check_sign_in_request), then the try counted against the limits."""
    check_sign_in_request(request, cookie)
    client = client_key(request)
    return counted(lambda: limits.sign_in(client, username))


def guard_register(
    limits: Limits, request: Request, username: str
) -> AbstractAsyncContextManager[None]:
    """Around every registration, on both APIs: as guard_sign_in, counted per client."""
    check_sign_in_request(request, False)
    client = client_key(request)
    return counted(lambda: limits.register(client, username))


async def profile(service: Service, user: User, count: int | None = None) -> Profile:
    """The user's profile; `count` (their studies) is looked up unless given."""
    if count is None:
        count = await service.accounts.study_count(user)
    admin = await service.accounts.is_admin(user)
    return Profile(
        user.id, user.username, user.email, user.full_name, user.date_joined, count, admin
    )


@post(
    "/api/v1/auth/register",
    status_code=201,
    tags=["accounts"],
    responses=errors(400, 409, 413, 415, 422, 429, 503),
)
async def register(
    request: Request, data: JSONBody[RegisterIn], service: ServiceDep, limiter: LimiterDep
) -> Profile:
    """Create an account (the legacy application's form: username, email, password,
    password2)."""
    async with guard_register(limiter, request, data.username):
        user = await service.accounts.register(
            data.username, data.password, data.password2, data.email, data.full_name
        )
    return await profile(service, user, 0)


@post(
    "/api/v1/auth/login",
    status_code=200,
    tags=["accounts"],
    responses=errors(400, 401, 403, 413, 415, 429, 503),
)
async def login(
    request: Request,
    data: JSONBody[LoginIn],
    service: ServiceDep,
    limiter: LimiterDep,
    settings: SettingsDep,
) -> Response[TokenOut]:
    """Exchange a username and password for a bearer token, or (cookie=true) a session
    cookie for the web app plus the CSRF token to echo in X-CSRF-Token."""
    kind = "session" if data.cookie else "bearer"
    async with guard_sign_in(limiter, request, data.username, data.cookie):
        user, raw, token = await service.accounts.sign_in(data.username, data.password, kind)
    body = TokenOut(
        token=None if data.cookie else raw,
        token_type="Bearer",
        expires_at=token.expires_at,
        user=await profile(service, user),
    )
    response = Response(body)
    if data.cookie:
        body.csrf_token = set_session_cookies(response, raw, token.expires_at, settings)
    return response


@post(
    "/api/v1/auth/logout",
    status_code=204,
    tags=["accounts"],
    operation_class=NoContentOperation,
    security=SIGNED_IN_ONLY,
    responses=errors(*SIGNED_IN_CHANGE),
)
async def logout(auth: AuthDep, service: ServiceDep) -> Response[None]:
    """Revoke the token (or session) this request was made with."""
    await service.accounts.sign_out(auth)
    response = Response(None, status_code=204)
    clear_session_cookies(response)
    return response


@get("/api/v1/auth/session", tags=["accounts"], security=ANYONE, responses=errors(*SIGNED_IN))
async def session(
    principal: PrincipalDep, service: ServiceDep, settings: SettingsDep
) -> SessionOut:
    """Who is signed in, if anyone (200 either way; the web app asks this at start), and
    whether analyses need a signed-in caller (CHEXRAY_REQUIRE_AUTH)."""
    user = await profile(service, principal.user) if principal else None
    return SessionOut(user, settings.require_auth)


@get("/api/v1/me", tags=["accounts"], security=SIGNED_IN_ONLY, responses=errors(*SIGNED_IN))
async def get_me(auth: AuthDep, service: ServiceDep) -> Profile:
    return await profile(service, auth.user)


@patch(
    "/api/v1/me",
    tags=["accounts"],
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN_CHANGE, 413),
)
async def patch_me(auth: AuthDep, data: JSONBody[ProfilePatch], service: ServiceDep) -> Profile:
    """Change email or full name."""
    user = await service.accounts.update_profile(auth.user, data.email, data.full_name)
    return await profile(service, user)


@post(
    "/api/v1/me/password",
    status_code=200,
    tags=["accounts"],
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN_CHANGE, 413, 422, 429),
)
async def change_password(
    request: Request,
    auth: AuthDep,
    data: JSONBody[PasswordChange],
    service: ServiceDep,
    limiter: LimiterDep,
) -> PasswordChanged:
    """Change the password; every other token and session of the account is revoked.
    Limited per client address and per account (wrong current passwords), 429 beyond."""
    async with counted(lambda: limiter.password_change(client_key(request), auth.user_id)):
        revoked = await service.accounts.change_password(
            auth, data.current_password, data.new_password, data.new_password2
        )
    return PasswordChanged(revoked)


@delete(
    "/api/v1/me",
    status_code=204,
    tags=["accounts"],
    operation_class=NoContentOperation,
    security=SIGNED_IN_ONLY,
    responses=errors(*SIGNED_IN_CHANGE),
)
async def delete_me(auth: AuthDep, service: ServiceDep) -> Response[None]:
    """Delete the account, its tokens, its studies and their files."""
    await service.accounts.delete(auth)
    response = Response(None, status_code=204)
    clear_session_cookies(response)
    return response
