"""The PACS transfer queue's rows (models.PacsTransfer): queue, claim one due for a try,
record the outcome. Claims are compare-and-set updates, so replicas sharing the database
never send the same study at once."""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session, col, func, or_, select, update

from server.store.models import PacsTransfer, Study, utcnow

PENDING, SENT, FAILED = "pending", "sent", "failed"


def queue(s: Session, study_id: str) -> bool:
    """(Re)queue a study for sending now; False when the study is gone."""
    if s.get(Study, study_id) is None:
        return False
    row = s.get(PacsTransfer, study_id)
    now = utcnow()
    if row is None:
        row = PacsTransfer(study_id=study_id)
    row.status, row.attempts, row.detail = PENDING, 0, ""
    row.next_try_at, row.updated_at, row.lease_until, row.sent_at = now, now, None, None
    s.add(row)
    s.commit()
    return True


def get(s: Session, study_id: str) -> PacsTransfer | None:
    return s.get(PacsTransfer, study_id)


def claim_due(s: Session, lease: dt.timedelta, limit: int) -> list[str]:
    """Up to `limit` pending transfers whose time has come and that nobody holds, leased
    to the caller until now + `lease`."""
    now = utcnow()
    due = s.exec(
        select(PacsTransfer.study_id)
        .where(PacsTransfer.status == PENDING, col(PacsTransfer.next_try_at) <= now)
        .where(or_(col(PacsTransfer.lease_until).is_(None), col(PacsTransfer.lease_until) < now))
        .order_by(col(PacsTransfer.next_try_at))
        .limit(limit)
    ).all()
    claimed = []
    for study_id in due:
        taken = s.exec(
            update(PacsTransfer)
            .where(col(PacsTransfer.study_id) == study_id, col(PacsTransfer.status) == PENDING)
            .where(
                or_(col(PacsTransfer.lease_until).is_(None), col(PacsTransfer.lease_until) < now)
            )
            .values(lease_until=now + lease)
        )
        if taken.rowcount == 1:
            claimed.append(study_id)
    s.commit()
    return claimed


def record(
    s: Session,
    study_id: str,
    status: str,
    detail: str,
    next_try_at: dt.datetime | None = None,
    sent_instances: list[str] | None = None,
) -> None:
    """The outcome of one try: sent, failed for good, or pending until `next_try_at`."""
    row = s.get(PacsTransfer, study_id)
    if row is None:
        return  # the study was deleted meanwhile
    now = utcnow()
    row.status, row.detail = status, detail[:2000]
    row.attempts += 1
    row.updated_at, row.lease_until = now, None
    if next_try_at is not None:
        row.next_try_at = next_try_at
    if status == SENT:
        row.sent_at = now
        row.sent_instances = sent_instances or []
    s.add(row)
    s.commit()


def counts(s: Session) -> dict[str, int]:
    """Transfers by status."""
    rows = s.exec(select(PacsTransfer.status, func.count()).group_by(PacsTransfer.status)).all()
    return {PENDING: 0, SENT: 0, FAILED: 0, **dict(rows)}
