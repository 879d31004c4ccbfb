"""Accounts and credentials, independent of protocol: register, sign in (a token), who a
token belongs to, profile, password, deletion."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlmodel import Session

from server.errors import Conflict, Unauthenticated, UnprocessableInput
from server.store import accounts
from server.store.models import Token, User
from server.store.passwords import policy_problems
from server.store.store import Store


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user and the token (or session) the call came with."""

    user: User
    token: Token
    raw_token: str

    @property
    def user_id(self) -> int:
        assert self.user.id is not None
        return self.user.id


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
    return accounts.revoke_other_tokens(s, who.user_id, who.token.id)


class Accounts:
    def __init__(self, store: Store, token_lifetime_hours: float) -> None:
        self.store = store
        self.lifetime = dt.timedelta(hours=token_lifetime_hours)

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

    async def principal(self, raw_token: str) -> Principal | None:
        """Who holds this token; None when it is unknown, expired or revoked."""
        row = await self.store.call(accounts.user_for_token, raw_token)
        return None if row is None else Principal(row[0], row[1], raw_token)

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
        """The account, its tokens, its studies and their files."""
        await self.store.delete_account(who.user_id)
