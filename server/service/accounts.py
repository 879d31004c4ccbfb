"""Accounts and credentials, independent of protocol: register, sign in (a token), API keys,
who a token or key belongs to, profile, password, deletion."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlmodel import Session

from server.errors import Conflict, Forbidden, NotFound, Unauthenticated, UnprocessableInput
from server.store import accounts
from server.store.models import ApiKey, Token, User
from server.store.passwords import policy_problems
from server.store.store import Store


def is_api_key(raw: str) -> bool:
    """Whether a credential is an API key (else a bearer or session token)."""
    return raw.startswith(accounts.KEY_PREFIX)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user and the token (or session) the call came with, or the API
    key (`key`, with `token` None). A key's calls are limited to inference: the front ends
    refuse it elsewhere."""

    user: User
    token: Token | None
    raw_token: str
    key: ApiKey | None = None

    @property
    def user_id(self) -> int:
        assert self.user.id is not None
        return self.user.id

    @property
    def by_key(self) -> bool:
        return self.key is not None


def unknown_credential(raw: str) -> Unauthenticated:
    """The error for a credential that matches no token or key."""
    if is_api_key(raw):
        return Unauthenticated("invalid_api_key", "the API key is unknown or was revoked")
    return Unauthenticated(
        "invalid_token", "the token is unknown, expired or revoked: log in again"
    )


def check_new_password(
    password: str, password2: str, username: str, field: str = "password"
) -> None:
    if password != password2:
        raise UnprocessableInput("password_mismatch", "the two passwords differ", {"field": field})
    problems = policy_problems(password, username)
    if problems:
        raise UnprocessableInput(
            "weak_password",
            "the password " + " and ".join(problems),
            {"field": field, "problems": problems},
        )


def _register(s: Session, username: str, password: str, email: str | None, full_name: str):
    try:
        return accounts.create_user(s, username, password, email, full_name)
    except accounts.UsernameTaken:
        raise Conflict(
            "username_taken", f"the username {username!r} is taken", {"field": "username"}
        ) from None


def _sign_in(
    s: Session, username: str, password: str, lifetime: dt.timedelta, kind: str
) -> tuple[User, str, Token]:
    """Check the password and issue a token, in one session."""
    user = accounts.authenticate(s, username, password)
    if user is None:
        raise Unauthenticated("invalid_credentials", "wrong username or password")
    raw, token = accounts.issue_token(s, user.id, lifetime, kind)
    return user, raw, token


def _change_password(s: Session, who: Principal, current: str, new: str, new2: str) -> int:
    if accounts.authenticate(s, who.user.username, current) is None:
        raise Unauthenticated(
            "invalid_credentials", "the current password is wrong", {"field": "current_password"}
        )
    check_new_password(new, new2, who.user.username, "new_password")
    accounts.set_password(s, who.user, new)
    return accounts.revoke_other_tokens(s, who.user_id, who.token.id if who.token else None)


def _create_key(s: Session, user_id: int, name: str, limit: int) -> tuple[str, ApiKey]:
    try:
        return accounts.create_key(s, user_id, name, limit)
    except accounts.KeyLimitReached:
        raise Conflict(
            "key_limit",
            f"an account holds at most {limit} API keys: revoke one you no longer use first",
            {"limit": limit},
        ) from None
    except accounts.UserGone:
        raise Unauthenticated("invalid_token", "the account no longer exists") from None


class Accounts:
    def __init__(
        self,
        store: Store,
        token_lifetime_hours: float,
        keys_per_user: int = 20,
        admins: tuple[str, ...] = (),
    ) -> None:
        """`admins`: the administrators' usernames; empty: the oldest account present."""
        self.store = store
        self.lifetime = dt.timedelta(hours=token_lifetime_hours)
        self.keys_per_user = keys_per_user
        self.admins = frozenset(admins)

    async def is_admin(self, user: User) -> bool:
        """Administrators switch model versions, run canaries and read the audit log."""
        if self.admins:
            return user.username in self.admins
        return user.id is not None and user.id == await self.store.call(accounts.first_user_id)

    async def require_admin(self, who: Principal) -> None:
        """Forbidden `not_admin` unless `who` is an administrator signed in (not a key)."""
        if who.by_key or not await self.is_admin(who.user):
            raise Forbidden(
                "not_admin",
                "only administrators may do this (CHEXRAY_ADMINS names them; by default the "
                "first account registered)",
            )

    async def user_named(self, username: str) -> User | None:
        return await self.store.call(accounts.find_user, username)

    async def register(
        self,
        username: str,
        password: str,
        password2: str,
        email: str | None = None,
        full_name: str = "",
    ) -> User:
        check_new_password(password, password2, username)
        return await self.store.call(_register, username, password, email, full_name)

    async def sign_in(self, username: str, password: str, kind: str) -> tuple[User, str, Token]:
        """`kind`: "bearer" (API clients) or "session" (the web app's cookie)."""
        return await self.store.call(_sign_in, username, password, self.lifetime, kind)

    async def issue_token(self, user: User, kind: str) -> tuple[str, Token]:
        return await self.store.call(accounts.issue_token, user.id, self.lifetime, kind)

    async def principal(self, raw: str) -> Principal | None:
        """Who holds this token or API key (told apart by the key's prefix); None when it
        is unknown, expired or revoked. Asked of the database every time: a revocation on
        any replica holds at once."""
        if is_api_key(raw):
            found = await self.store.call(accounts.user_for_key, raw)
            return None if found is None else Principal(found[0], None, raw, found[1])
        row = await self.store.call(accounts.user_for_token, raw)
        return None if row is None else Principal(row[0], row[1], raw)

    async def create_key(self, who: Principal, name: str) -> tuple[str, ApiKey]:
        """A new API key of the caller's: the raw key (shown once: only its hash is kept)
        and its row. Conflict `key_limit` past keys_per_user."""
        return await self.store.call(_create_key, who.user_id, name, self.keys_per_user)

    async def keys(self, who: Principal) -> list[ApiKey]:
        """The caller's API keys, newest first."""
        return await self.store.call(accounts.list_keys, who.user_id)

    async def revoke_key(self, who: Principal, key_id: int) -> None:
        """Delete one of the caller's keys; NotFound for another's or a missing one."""
        if not await self.store.call(accounts.delete_key, who.user_id, key_id):
            raise NotFound("not_found", f"you have no API key with id {key_id}")

    async def sign_out(self, who: Principal) -> None:
        await self.store.call(accounts.revoke_token, who.raw_token)

    async def study_count(self, user: User) -> int:
        return await self.store.call(accounts.study_count, user.id)

    async def update_profile(self, user: User, email: str | None, full_name: str | None) -> User:
        return await self.store.call(accounts.update_profile, user, email, full_name)

    async def change_password(self, who: Principal, current: str, new: str, new2: str) -> int:
        """Returns how many other tokens and sessions of the account were revoked."""
        return await self.store.call(_change_password, who, current, new, new2)

    async def delete(self, who: Principal) -> None:
        """The account, its tokens and API keys, its studies and their files."""
        await self.store.delete_account(who.user_id)
