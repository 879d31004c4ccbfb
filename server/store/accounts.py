"""Users, tokens and API keys. Plain functions over a Session; the API calls them in worker
threads."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, func, select, update

from server.store.models import ApiKey, Study, Token, User, utcnow
from server.store.passwords import hash_password, needs_rehash, verify_password

# API keys start with this, so that people, logs and secret scanners recognise them, and
# the server tells them from session tokens (which never start with it).
KEY_PREFIX = "chx_"
# How many characters of a key are kept in clear to tell keys apart in a list: the prefix
# and 6 random characters (36 of the key's 256 random bits).
SHOWN_CHARS = len(KEY_PREFIX) + 6
# last_used_at is written at most this often per key.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class UsernameTaken(Exception):
    pass


class KeyLimitReached(Exception):
    pass


class UserGone(Exception):
    """The user was deleted meanwhile."""


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
    while raw.startswith(KEY_PREFIX):  # 1 in 16.7 million: it would read as an API key
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


def create_key(s: Session, user_id: int, name: str, limit: int) -> tuple[str, ApiKey]:
    """A new API key (256 random bits after KEY_PREFIX); the raw value exists only in the
    return value. KeyLimitReached when the user has `limit` keys already.

    Two requests at once (on several replicas) cannot both take the last place: on
    PostgreSQL the user's row is locked first; on SQLite the insert takes the database's
    write lock before the count, which therefore sees every committed key."""
    if s.exec(select(User.id).where(User.id == user_id).with_for_update()).first() is None:
        raise UserGone(user_id)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(user_id=user_id, name=name, key_hash=_digest(raw), prefix=raw[:SHOWN_CHARS])
    s.add(key)
    try:
        s.flush()
    except IntegrityError:  # the user's row went between the lock and the insert (SQLite)
        s.rollback()
        raise UserGone(user_id) from None
    count = s.exec(select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user_id)).one()
    if count > limit:
        s.rollback()
        raise KeyLimitReached(limit)
    s.commit()
    s.refresh(key)
    return raw, key


def list_keys(s: Session, user_id: int) -> list[ApiKey]:
    return list(
        s.exec(
            select(ApiKey).where(ApiKey.user_id == user_id).order_by(col(ApiKey.id).desc())
        ).all()
    )


def delete_key(s: Session, user_id: int, key_id: int) -> bool:
    """Revoke (delete) the user's key; False when they have no key of that id."""
    result = s.exec(delete(ApiKey).where(col(ApiKey.id) == key_id, col(ApiKey.user_id) == user_id))
    s.commit()
    return bool(result.rowcount)


def user_for_key(s: Session, raw: str) -> tuple[User, ApiKey] | None:
    """The key's owner and the key, or None. Looked up in the database on every call (no
    cache): a key revoked on any replica stops working at once."""
    row = s.exec(
        select(User, ApiKey)
        .join(ApiKey, col(ApiKey.user_id) == col(User.id))
        .where(ApiKey.key_hash == _digest(raw))
    ).first()
    if row is None:
        return None
    user, key = row
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        s.exec(update(ApiKey).where(col(ApiKey.id) == key.id).values(last_used_at=now))
        s.commit()
        key.last_used_at = now
    return user, key


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
    """Delete the user, their tokens, API keys and studies in one transaction; return the ids of the
    studies this deletion removed, so that exactly their files are deleted.

    No study can slip past: the user's row is locked first (PostgreSQL), so a study being
    added meanwhile either commits before the delete below (which then removes and reports
    it) or fails its foreign key afterwards (and its writer removes its files). On SQLite
    the delete takes the database's one write lock, with the same effect."""
    s.exec(select(User.id).where(User.id == user_id).with_for_update())
    ids = s.exec(delete(Study).where(col(Study.owner_id) == user_id).returning(col(Study.id))).all()
    s.exec(delete(Token).where(col(Token.user_id) == user_id))
    s.exec(delete(ApiKey).where(col(ApiKey.user_id) == user_id))
    s.exec(delete(User).where(col(User.id) == user_id))
    s.commit()
    return [row[0] for row in ids]


def first_user_id(s: Session) -> int | None:
    """The id of the oldest account still present (the default administrator)."""
    return s.exec(select(func.min(User.id))).one()
