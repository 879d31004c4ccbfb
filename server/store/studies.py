"""Studies: create, read with ownership, list newest first, delete."""

from __future__ import annotations

import secrets

from sqlmodel import Session, col, delete, func, select

from server.store.models import Study


def new_study_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits, 22 characters


def add_study(s: Session, study: Study) -> Study:
    s.add(study)
    s.commit()
    s.refresh(study)
    return study


def get_study(s: Session, study_id: str, user_id: int | None) -> Study | None:
    """The study if the caller may see it: its owner, or anyone holding the id of an
    anonymous study. Everyone else gets None (the API answers 404, not 403)."""
    study = s.get(Study, study_id)
    if study is None:
        return None
    if study.owner_id is not None and study.owner_id != user_id:
        return None
    return study


def list_studies(
    s: Session, user_id: int, page: int, per_page: int, finding: str | None
) -> tuple[list[Study], int]:
    where = [col(Study.owner_id) == user_id]
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
