"""Studies: create, read with ownership, list newest first, delete; and the queries of the
store's sweep (expired anonymous studies, rows of missing files)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_
from sqlmodel import Session, col, delete, func, select, update

from server.store.models import Study, utcnow


def new_study_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits, 22 characters


def new_delete_token() -> tuple[str, str]:
    """A one-time deletion secret for an anonymous study and the hash that is stored."""
    raw = secrets.token_urlsafe(32)
    return raw, token_hash(raw)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def delete_token_matches(study: Study, raw: str) -> bool:
    """Constant-time comparison of the hashes: timing says nothing about the secret."""
    if study.delete_token_hash is None:
        return False
    return hmac.compare_digest(study.delete_token_hash, token_hash(raw))


def _expired_anonymous(cutoff: dt.datetime) -> ColumnElement[bool]:
    return and_(col(Study.owner_id).is_(None), col(Study.created_at) <= cutoff)


def _visible() -> ColumnElement[bool]:
    return col(Study.files_missing_since).is_(None)


def add_study(s: Session, study: Study) -> Study:
    """Insert and commit. No reading back afterwards: every field is set here, and a read
    after the commit could fail (the database going away) and report as failed a study
    that is in fact stored."""
    s.add(study)
    s.commit()
    return study


def exists(s: Session, study_id: str) -> bool:
    return s.exec(select(Study.id).where(Study.id == study_id)).first() is not None


def get_study(
    s: Session, study_id: str, user_id: int | None, anonymous_cutoff: dt.datetime
) -> Study | None:
    """The study if the caller may see it: its owner, or anyone holding the id of an
    anonymous study created after `anonymous_cutoff` (older ones have expired). Everyone
    else gets None (the API answers 404, not 403), as for a study whose files are missing."""
    study = s.get(Study, study_id)
    if study is None or study.files_missing_since is not None:
        return None
    if study.owner_id is None:
        return study if study.created_at > anonymous_cutoff else None
    return study if study.owner_id == user_id else None


def list_studies(
    s: Session, user_id: int, page: int, per_page: int, finding: str | None
) -> tuple[list[Study], int]:
    where = [col(Study.owner_id) == user_id, _visible()]
    if finding is not None:
        where.append(col(Study.present).contains(f"|{finding}|"))
    total = s.exec(select(func.count()).select_from(Study).where(*where)).one()
    rows = s.exec(
        select(Study)
        .where(*where)
        .order_by(col(Study.created_at).desc(), col(Study.id))
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    return list(rows), int(total)


def delete_study(s: Session, study_id: str) -> bool:
    """Delete the row; False when it was already gone (a concurrent delete won)."""
    deleted = s.exec(delete(Study).where(col(Study.id) == study_id)).rowcount
    s.commit()
    return bool(deleted)


def count_anonymous(s: Session, anonymous_cutoff: dt.datetime) -> int:
    """Anonymous studies kept now (those not yet expired)."""
    where = and_(col(Study.owner_id).is_(None), col(Study.created_at) > anonymous_cutoff)
    return int(s.exec(select(func.count()).select_from(Study).where(where)).one())


def delete_expired(s: Session, anonymous_cutoff: dt.datetime, limit: int = 500) -> list[str]:
    """Delete up to `limit` expired anonymous studies; the ids this call deleted (with
    several replicas sweeping, each row is reported by the one that deleted it)."""
    ids = s.exec(select(Study.id).where(_expired_anonymous(anonymous_cutoff)).limit(limit)).all()
    if not ids:
        return []
    gone = s.exec(
        delete(Study)
        .where(col(Study.id).in_(ids), _expired_anonymous(anonymous_cutoff))
        .returning(col(Study.id))
    ).all()
    s.commit()
    return [row[0] for row in gone]


def existing_ids(s: Session, ids: Sequence[str]) -> set[str]:
    return set(s.exec(select(Study.id).where(col(Study.id).in_(list(ids)))).all())


def page_of_rows(
    s: Session, after: str, limit: int, only: Sequence[str] | None = None
) -> list[tuple[str, bool, dt.datetime]]:
    """(id, marked missing, created at) of studies in id order after `after` (of `only`
    those ids, if given): the sweep walks every row this way without holding them all."""
    stmt = select(Study.id, Study.files_missing_since, Study.created_at).where(
        col(Study.id) > after
    )
    if only is not None:
        stmt = stmt.where(col(Study.id).in_(list(only)))
    rows = s.exec(stmt.order_by(col(Study.id)).limit(limit)).all()
    return [(study_id, missing is not None, created) for study_id, missing, created in rows]


def mark_missing(s: Session, ids: Sequence[str], missing: bool) -> None:
    """Mark studies whose image file is missing (hiding them), or clear the mark."""
    stmt = update(Study).where(col(Study.id).in_(list(ids)))
    if missing:
        stmt = stmt.where(col(Study.files_missing_since).is_(None)).values(
            files_missing_since=utcnow()
        )
    else:
        stmt = stmt.values(files_missing_since=None)
    s.exec(stmt)
    s.commit()
