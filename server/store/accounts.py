"""Users and tokens. Plain functions over a Session; the API calls them in worker threads."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, func, select, update

from server.store.models import Study, Token, User, utcnow
from server.store.passwords import hash_password, needs_rehash, verify_password


class UsernameTaken(Exception):
    pass


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_user(
    s: Session, username: str, password: str, email: str | None = None, full_name: str = ""
) -> User:
    user = User(
        username=username, email=email, full_name=full_name, password_hash=hash_password(password)
    )
    s.add(user)
    try:
        s.commit()
    except IntegrityError:
        s.rollback()
        raise UsernameTaken(username) from None
    s.refresh(user)
    return user


def find_user(s: Session, username: str) -> User | None:
    return s.exec(select(User).where(User.username == username)).first()


def authenticate(s: Session, username: str, password: str) -> User | None:
    """The user, or None. Unknown names cost one argon2 verification too."""
    user = find_user(s, username)
    if not verify_password(user.password_hash if user else None, password):
        return None
    assert user is not None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        s.add(user)
        s.commit()
    return user


def issue_token(
    s: Session, user_id: int, lifetime: dt.timedelta, kind: str = "bearer"
) -> tuple[str, Token]:
    """A new 256-bit token; the raw value exists only in the return value."""
    raw = secrets.token_urlsafe(32)
    token = Token(
        user_id=user_id, token_hash=_digest(raw), kind=kind, expires_at=utcnow() + lifetime
    )
    s.add(token)
    s.commit()
    return raw, token


def user_for_token(s: Session, raw: str) -> tuple[User, Token] | None:
    row = s.exec(
        select(User, Token)
        .join(Token, col(Token.user_id) == col(User.id))
        .where(Token.token_hash == _digest(raw))
    ).first()
    if row is None:
        return None
    user, token = row
    if token.revoked_at is not None or token.expires_at <= utcnow():
        return None
    return user, token


def revoke_token(s: Session, raw: str) -> None:
    s.exec(
        update(Token)
        .where(col(Token.token_hash) == _digest(raw), col(Token.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    s.commit()


def revoke_other_tokens(s: Session, user_id: int, keep_token_id: int | None) -> int:
    stmt = update(Token).where(col(Token.user_id) == user_id, col(Token.revoked_at).is_(None))
    if keep_token_id is not None:
        stmt = stmt.where(col(Token.id) != keep_token_id)
    result = s.exec(stmt.values(revoked_at=utcnow()))
    s.commit()
    return result.rowcount or 0


def set_password(s: Session, user: User, password: str) -> None:
    user.password_hash = hash_password(password)
    s.add(user)
    s.commit()


def update_profile(s: Session, user: User, email: str | None, full_name: str | None) -> User:
    if email is not None:
        user.email = email
    if full_name is not None:
        user.full_name = full_name
    s.add(user)
    s.commit()
    s.refresh(user)
    return user


def study_count(s: Session, user_id: int) -> int:
    return s.exec(
        select(func.count())
        .select_from(Study)
        .where(Study.owner_id == user_id, col(Study.files_missing_since).is_(None))
    ).one()


def delete_user(s: Session, user_id: int) -> list[str]:
    """Delete the user, their tokens and studies in one transaction; return the ids of the
    studies this deletion removed, so that exactly their files are deleted.

    No study can slip past: the user's row is locked first (PostgreSQL), so a study being
    added meanwhile either commits before the delete below (which then removes and reports
    it) or fails its foreign key afterwards (and its writer removes its files). On SQLite
    the delete takes the database's one write lock, with the same effect."""
    s.exec(select(User.id).where(User.id == user_id).with_for_update())
    ids = s.exec(delete(Study).where(col(Study.owner_id) == user_id).returning(col(Study.id))).all()
    s.exec(delete(Token).where(col(Token.user_id) == user_id))
    s.exec(delete(User).where(col(User.id) == user_id))
    s.commit()
    return [row[0] for row in ids]
