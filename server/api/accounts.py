"""Accounts: register, log in and out, profile, password, account deletion."""

from __future__ import annotations

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
from server.api.ratelimit import RateLimiter
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
from server.service import Service, User


def guard_sign_in(
    limiter: RateLimiter, request: Request, username: str, cookie: bool = False
) -> None:
    """Before any register or log-in, on both APIs: a JSON body from where it may come
    (check_sign_in_request), then the attempt counted against the rate limits."""
    check_sign_in_request(request, cookie)
    wait = limiter.hit(client_key(request), f"user:{username.lower()}")
    if wait is not None:
        seconds = int(wait + 0.999)
        raise ApiError(
            429,
            "rate_limited",
            f"too many attempts; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


async def profile(service: Service, user: User, count: int | None = None) -> Profile:
    """The user's profile; `count` (their studies) is looked up unless given."""
    if count is None:
        count = await service.accounts.study_count(user)
    return Profile(user.id, user.username, user.email, user.full_name, user.date_joined, count)


@post("/api/v1/auth/register", status_code=201, tags=["accounts"])
async def register(
    request: Request, data: JSONBody[RegisterIn], service: ServiceDep, limiter: LimiterDep
) -> Profile:
    """Create an account (the legacy application's form: username, email, password,
    password2)."""
    guard_sign_in(limiter, request, data.username)
    user = await service.accounts.register(
        data.username, data.password, data.password2, data.email, data.full_name
    )
    return await profile(service, user, 0)


@post("/api/v1/auth/login", status_code=200, tags=["accounts"])
async def login(
    request: Request,
    data: JSONBody[LoginIn],
    service: ServiceDep,
    limiter: LimiterDep,
    settings: SettingsDep,
) -> Response[TokenOut]:
    """Exchange a username and password for a bearer token, or (cookie=true) a session
    cookie for the web app plus the CSRF token to echo in X-CSRF-Token."""
    guard_sign_in(limiter, request, data.username, data.cookie)
    kind = "session" if data.cookie else "bearer"
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


@post("/api/v1/auth/logout", status_code=204, tags=["accounts"])
async def logout(auth: AuthDep, service: ServiceDep) -> Response[None]:
    """Revoke the token (or session) this request was made with."""
    await service.accounts.sign_out(auth)
    response = Response(None, status_code=204)
    clear_session_cookies(response)
    return response


@get("/api/v1/auth/session", tags=["accounts"])
async def session(principal: PrincipalDep, service: ServiceDep) -> SessionOut:
    """Who is signed in, if anyone (200 either way; the web app asks this at start)."""
    return SessionOut(await profile(service, principal.user) if principal else None)


@get("/api/v1/me", tags=["accounts"])
async def get_me(auth: AuthDep, service: ServiceDep) -> Profile:
    return await profile(service, auth.user)


@patch("/api/v1/me", tags=["accounts"])
async def patch_me(auth: AuthDep, data: JSONBody[ProfilePatch], service: ServiceDep) -> Profile:
    """Change email or full name."""
    user = await service.accounts.update_profile(auth.user, data.email, data.full_name)
    return await profile(service, user)


@post("/api/v1/me/password", status_code=200, tags=["accounts"])
async def change_password(
    auth: AuthDep, data: JSONBody[PasswordChange], service: ServiceDep
) -> PasswordChanged:
    """Change the password; every other token and session of the account is revoked."""
    revoked = await service.accounts.change_password(
        auth, data.current_password, data.new_password, data.new_password2
    )
    return PasswordChanged(revoked)


@delete("/api/v1/me", status_code=204, tags=["accounts"])
async def delete_me(auth: AuthDep, service: ServiceDep) -> Response[None]:
    """Delete the account, its tokens, its studies and their files."""
    await service.accounts.delete(auth)
    response = Response(None, status_code=204)
    clear_session_cookies(response)
    return response
