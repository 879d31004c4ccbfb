"""Accounts: register, log in and out, profile, password, account deletion."""

from __future__ import annotations

import datetime as dt

from litestar import Request, Response, delete, get, patch, post
from litestar.params import JSONBody
from sqlmodel import Session

from server.api.auth import (
    Principal,
    clear_session_cookies,
    client_key,
    set_session_cookies,
)
from server.api.deps import AuthDep, DbDep, LimiterDep, MediaDep, PrincipalDep, SettingsDep
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
from server.settings import Settings
from server.store import accounts
from server.store.models import Token, User
from server.store.passwords import policy_problems


def rate_limit(limiter: RateLimiter, request: Request, username: str) -> None:
    wait = limiter.hit(client_key(request), f"user:{username.lower()}")
    if wait is not None:
        seconds = int(wait + 0.999)
        raise ApiError(
            429,
            "rate_limited",
            f"too many attempts; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


def check_new_password(
    password: str, password2: str, username: str, field: str = "password"
) -> None:
    if password != password2:
        raise ApiError(422, "password_mismatch", "the two passwords differ", {"field": field})
    problems = policy_problems(password, username)
    if problems:
        raise ApiError(
            422,
            "weak_password",
            "the password " + " and ".join(problems),
            {"field": field, "problems": problems},
        )


def profile(s: Session, user: User, count: int | None = None) -> Profile:
    """The user's profile; `count` (their studies) is looked up unless given."""
    if count is None:
        count = accounts.study_count(s, user.id)
    return Profile(user.id, user.username, user.email, user.full_name, user.date_joined, count)


def register_user(
    s: Session, username: str, password: str, email: str | None, full_name: str
) -> User:
    try:
        return accounts.create_user(s, username, password, email, full_name)
    except accounts.UsernameTaken:
        raise ApiError(
            409, "username_taken", f"the username {username!r} is taken", {"field": "username"}
        ) from None


def issue(s: Session, user: User, settings: Settings, kind: str) -> tuple[str, Token]:
    return accounts.issue_token(s, user.id, dt.timedelta(hours=settings.token_lifetime_hours), kind)


def sign_in(
    s: Session, username: str, password: str, settings: Settings, kind: str
) -> tuple[User, str, Token]:
    """Check the password and issue a token, in one session."""
    user = accounts.authenticate(s, username, password)
    if user is None:
        raise ApiError(401, "invalid_credentials", "wrong username or password")
    raw, token = issue(s, user, settings, kind)
    return user, raw, token


@post("/api/v1/auth/register", status_code=201, tags=["accounts"])
async def register(
    request: Request, data: JSONBody[RegisterIn], db: DbDep, limiter: LimiterDep
) -> Profile:
    """Create an account (the seed's form: username, email, password, password2)."""
    rate_limit(limiter, request, data.username)
    check_new_password(data.password, data.password2, data.username)
    user = await db.call(register_user, data.username, data.password, data.email, data.full_name)
    return await db.call(profile, user, 0)


@post("/api/v1/auth/login", status_code=200, tags=["accounts"])
async def login(
    request: Request, data: JSONBody[LoginIn], db: DbDep, limiter: LimiterDep, settings: SettingsDep
) -> Response[TokenOut]:
    """Exchange a username and password for a bearer token, or (cookie=true) a session
    cookie for the web app plus the CSRF token to echo in X-CSRF-Token."""
    rate_limit(limiter, request, data.username)
    kind = "session" if data.cookie else "bearer"
    user, raw, token = await db.call(sign_in, data.username, data.password, settings, kind)
    body = TokenOut(
        token=None if data.cookie else raw,
        token_type="Bearer",
        expires_at=token.expires_at,
        user=await db.call(profile, user),
    )
    response = Response(body)
    if data.cookie:
        body.csrf_token = set_session_cookies(response, raw, token.expires_at, settings)
    return response


@post("/api/v1/auth/logout", status_code=204, tags=["accounts"])
async def logout(auth: AuthDep, db: DbDep) -> Response[None]:
    """Revoke the token (or session) this request was made with."""
    await db.call(accounts.revoke_token, auth.raw_token)
    response = Response(None, status_code=204)
    clear_session_cookies(response)
    return response


@get("/api/v1/auth/session", tags=["accounts"])
async def session(principal: PrincipalDep, db: DbDep) -> SessionOut:
    """Who is signed in, if anyone (200 either way; the web app asks this at start)."""
    return SessionOut(await db.call(profile, principal.user) if principal else None)


@get("/api/v1/me", tags=["accounts"])
async def get_me(auth: AuthDep, db: DbDep) -> Profile:
    return await db.call(profile, auth.user)


def _patch(s: Session, user: User, data: ProfilePatch) -> Profile:
    return profile(s, accounts.update_profile(s, user, data.email, data.full_name))


@patch("/api/v1/me", tags=["accounts"])
async def patch_me(auth: AuthDep, data: JSONBody[ProfilePatch], db: DbDep) -> Profile:
    """Change email or full name."""
    return await db.call(_patch, auth.user, data)


def _change_password(s: Session, auth: Principal, data: PasswordChange) -> int:
    if accounts.authenticate(s, auth.user.username, data.current_password) is None:
        raise ApiError(
            401,
            "invalid_credentials",
            "the current password is wrong",
            {"field": "current_password"},
        )
    check_new_password(data.new_password, data.new_password2, auth.user.username, "new_password")
    accounts.set_password(s, auth.user, data.new_password)
    return accounts.revoke_other_tokens(s, auth.user_id, auth.token.id)


@post("/api/v1/me/password", status_code=200, tags=["accounts"])
async def change_password(
    auth: AuthDep, data: JSONBody[PasswordChange], db: DbDep
) -> PasswordChanged:
    """Change the password; every other token and session of the account is revoked."""
    return PasswordChanged(await db.call(_change_password, auth, data))


@delete("/api/v1/me", status_code=204, tags=["accounts"])
async def delete_me(auth: AuthDep, db: DbDep, media: MediaDep) -> Response[None]:
    """Delete the account, its tokens, its studies and their files."""
    for study_id in await db.call(accounts.delete_user, auth.user_id):
        await db.run(media.delete_study, study_id)
    response = Response(None, status_code=204)
    clear_session_cookies(response)
    return response
