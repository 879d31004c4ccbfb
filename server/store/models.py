"""The database tables: users, their session tokens and API keys, studies (one X-ray each),
the files of studies when they are kept in the database, the shared rate-limit counts,
and the audit log."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DDL, JSON, BigInteger, Column, Index, LargeBinary, event
from sqlmodel import Field, SQLModel


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=150)
    email: str | None = Field(default=None, max_length=254)
    full_name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=200)
    date_joined: dt.datetime = Field(default_factory=utcnow)


class Token(SQLModel, table=True):
    """A bearer or session token. Only its SHA-256 is stored: a leaked table opens nothing."""

    __tablename__ = "tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    token_hash: str = Field(index=True, unique=True, max_length=64)
    kind: str = Field(default="bearer", max_length=16)  # "bearer" or "session"
    created_at: dt.datetime = Field(default_factory=utcnow)
    expires_at: dt.datetime
    revoked_at: dt.datetime | None = None


class ApiKey(SQLModel, table=True):
    """A named API key for a service: inference only (server/api/auth.py). Only its SHA-256
    is stored; `prefix` (the first characters, not enough to use it) tells keys apart in
    lists. Revoking deletes the row."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=100)
    key_hash: str = Field(index=True, unique=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: dt.datetime = Field(default_factory=utcnow)
    # Updated at most once a minute per key: a lookup must not become a write per request.
    last_used_at: dt.datetime | None = None


class Study(SQLModel, table=True):
    """One analysed X-ray. `id` is random and unguessable: anonymous studies are reachable
    by it alone and never listed."""

    __tablename__ = "studies"

    id: str = Field(primary_key=True, max_length=32)
    owner_id: int | None = Field(
        default=None, foreign_key="users.id", index=True, ondelete="CASCADE"
    )
    title: str = Field(default="", max_length=200)
    created_at: dt.datetime = Field(default_factory=utcnow, index=True)
    model_version: str = Field(max_length=64)
    trained: bool
    # Per finding, FINDINGS order.
    probabilities: list[float] = Field(sa_column=Column(JSON, nullable=False))
    calls: list[bool] = Field(sa_column=Column(JSON, nullable=False))
    thresholds: list[float] = Field(sa_column=Column(JSON, nullable=False))
    cam_probabilities: list[float] = Field(sa_column=Column(JSON, nullable=False))
    member_probabilities: dict = Field(sa_column=Column(JSON, nullable=False))
    cam_maps: list = Field(sa_column=Column(JSON, nullable=False))  # [5][h][w], to redraw
    # Present findings as "|Edema|Cardiomegaly|" so history can filter with LIKE.
    present: str = Field(default="|", max_length=200, index=True)
    image_format: str = Field(max_length=8)
    width: int
    height: int
    bit_depth: int
    notes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    # A DICOM source's Modality, BodyPartExamined, ViewPosition, ... (service/results.py);
    # None for PNG and JPEG. Such a study keeps its source's header (no pixels) beside its
    # image, so that its results can be written as DICOM objects in the source's study.
    dicom: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    timings: dict = Field(sa_column=Column(JSON, nullable=False))
    # What answered (e.g. openvino-cpu-bf16, bf16); None for studies stored before it was
    # recorded. Nullable columns added later are added to older databases at start-up.
    backend: str | None = Field(default=None, max_length=32)
    precision: str | None = Field(default=None, max_length=8)
    # Anonymous studies: the SHA-256 of the one-time secret that lets their uploader delete
    # them (the secret itself is only ever in the creating response).
    delete_token_hash: str | None = Field(default=None, max_length=64)
    # Set by the store's sweep when the study's image file is missing (see Store.sweep):
    # such a study is hidden, not deleted, and shown again if its files come back.
    files_missing_since: dt.datetime | None = None


class StudyFile(SQLModel, table=True):
    """A study's file (image.png, heatmaps) kept in the database (CHEXRAY_MEDIA_STORE=
    database) instead of the media folder. The foreign key deletes it with its study, in
    the same transaction; it cannot be written for a study that is gone."""

    __tablename__ = "study_files"

    study_id: str = Field(
        foreign_key="studies.id", primary_key=True, max_length=32, ondelete="CASCADE"
    )
    name: str = Field(primary_key=True, max_length=64)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


# PNGs do not compress: PostgreSQL's attempt to (the default storage of bytea) made writing
# a study 7x slower (bench/media_store.py), so the column is stored uncompressed.
event.listen(
    StudyFile.__table__,
    "after_create",
    DDL("ALTER TABLE study_files ALTER COLUMN data SET STORAGE EXTERNAL").execute_if(
        dialect="postgresql"
    ),
)


class RateCount(SQLModel, table=True):
    """One key of a rate limit's sliding window (server/counting.py), shared by the replicas
    that share the database: the times of its last events, newest last. `key` is a SHA-256
    of the window and the key (a client address, a username), so neither is kept in clear.
    Rows whose events have all left the window (`expires_at`, seconds since the epoch) are
    deleted by the replicas as they count."""

    __tablename__ = "rate_counts"

    key: str = Field(primary_key=True, max_length=64)
    window: str = Field(max_length=16)
    times: list[float] = Field(sa_column=Column(JSON, nullable=False))
    expires_at: float = Field(index=True)


Index("ix_rate_counts_window_expires", RateCount.window, RateCount.expires_at)


class PacsTransfer(SQLModel, table=True):
    """A stored study's DICOM results on their way to the PACS (server/service/pacs.py):
    pending (waiting for its next try), sent, or failed (with the reason). The row goes
    with its study. `lease_until` lets one replica at a time send it."""

    __tablename__ = "pacs_transfers"

    study_id: str = Field(
        foreign_key="studies.id", primary_key=True, max_length=32, ondelete="CASCADE"
    )
    status: str = Field(default="pending", max_length=16, index=True)
    attempts: int = 0
    detail: str = Field(default="", max_length=2000)
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)
    next_try_at: dt.datetime = Field(default_factory=utcnow, index=True)
    lease_until: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    # SOP instance UIDs the PACS acknowledged, for the record.
    sent_instances: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class AuditRecord(SQLModel, table=True):
    """One analysis asked of CheXray, answered or refused (server/store/audit.py): who asked
    (no patient identity: the input is known by its SHA-256 only), what answered and what
    it said. Records form one hash chain (`prev_hash` -> `hash`) and are never updated;
    only retention deletes the oldest. Deliberately without foreign keys: a record
    outlives the study and the account it speaks of."""

    __tablename__ = "audit_log"

    # The record's place in the chain, given under the chain's lock (not by a sequence):
    # ids are consecutive, so a deleted record leaves a gap that verification finds.
    id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    time: dt.datetime = Field(index=True)  # UTC
    request_id: str | None = Field(default=None, max_length=64)
    protocol: str = Field(max_length=16)  # rest, legacy, oip-rest, oip-grpc, dicomweb, pacs-pull
    principal: str = Field(max_length=16)  # user, api_key, anonymous
    user_id: int | None = None
    api_key_id: int | None = None
    client: str | None = Field(default=None, max_length=64)
    input_sha256: str | None = Field(default=None, max_length=64)
    image_format: str | None = Field(default=None, max_length=8)
    byte_size: int | None = None
    width: int | None = None
    height: int | None = None
    model_version: str | None = Field(default=None, max_length=64)
    backend: str | None = Field(default=None, max_length=32)
    precision: str | None = Field(default=None, max_length=8)
    forced: bool = False  # analysed outside the intended use on the caller's request
    # Per finding, FINDINGS order; None when refused.
    thresholds: list[float] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    probabilities: list[float] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    calls: list[bool] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # decode_ms, queue_ms, compute_ms, total_ms
    timings: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    outcome: str = Field(max_length=16)  # answered, refused
    error_code: str | None = Field(default=None, max_length=64)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditChain(SQLModel, table=True):
    """The audit chain's head, one row (id 1): the last record's id and hash, locked by
    every append so that replicas sharing the database extend one chain; and the anchor,
    the last record that retention deleted, from which the chain is verified."""

    __tablename__ = "audit_chain"

    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    last_id: int = Field(default=0, sa_type=BigInteger)
    last_hash: str = Field(max_length=64)
    anchor_id: int = Field(default=0, sa_type=BigInteger)
    anchor_hash: str = Field(max_length=64)
    anchor_time: dt.datetime | None = None


GENESIS_HASH = "0" * 64

# The head row exists from the moment the table does (created under the schema lock, so
# once, whichever replica creates it).
event.listen(
    AuditChain.__table__,
    "after_create",
    DDL(
        "INSERT INTO audit_chain (id, last_id, last_hash, anchor_id, anchor_hash) "
        f"VALUES (1, 0, '{GENESIS_HASH}', 0, '{GENESIS_HASH}')"
    ),
)
