"""Request and response bodies: msgspec Structs, from which Litestar builds the OpenAPI."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

# The patterns mean the same to msgspec (Python's re) as to JSON Schema readers. Python's
# `$` also matches before a final newline ("alice\n" would pass): (?!\n) refuses that and
# changes nothing elsewhere. An email character is spelled out (no "@", no space, no
# control character), as Python's \s and JSON Schema's differ on \x1c-\x1f, \x85, \ufeff.
_END = r"$(?!\n)"
_EMAIL_CHAR = r"[^@\s\x00-\x1f\x7f-\x9f\ufeff]"
Username = Annotated[str, Meta(min_length=1, max_length=150, pattern=r"^[\w.@+-]+" + _END)]
Email = Annotated[
    str,
    Meta(max_length=254, pattern=f"^{_EMAIL_CHAR}+@{_EMAIL_CHAR}+\\.{_EMAIL_CHAR}+{_END}"),
]
Password = Annotated[str, Meta(min_length=1, max_length=1024)]


class Error(msgspec.Struct):
    code: str
    message: str
    # Any JSON value, null included (`object | None` would document null twice: a oneOf
    # that no null matches exactly once).
    detail: object = None
    request_id: str | None = None


# -- accounts ---------------------------------------------------------------------------


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    username: Username
    email: Email
    password: Password
    password2: Password
    full_name: Annotated[str, Meta(max_length=200)] = ""


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, Meta(max_length=150)]
    password: Password
    # true: set an HttpOnly session cookie (the web app) instead of returning the token
    cookie: bool = False


class Profile(msgspec.Struct):
    id: int
    username: str
    email: str | None
    full_name: str
    date_joined: dt.datetime
    study_count: int
    is_admin: bool = False  # may switch model versions and read the audit log


class SessionOut(msgspec.Struct):
    user: Profile | None  # None: nobody is signed in
    # CHEXRAY_REQUIRE_AUTH: analyses need a signed-in caller (the web app asks to sign in)
    auth_required: bool = False


class TokenOut(msgspec.Struct):
    token: str | None  # None when the credential went into a cookie
    token_type: Literal["Bearer"]
    expires_at: dt.datetime
    user: Profile
    csrf_token: str | None = None  # cookie mode: send it back as X-CSRF-Token


class ProfilePatch(msgspec.Struct, forbid_unknown_fields=True):
    email: Email | None = None
    full_name: Annotated[str, Meta(max_length=200)] | None = None


class PasswordChange(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Password
    new_password: Password
    new_password2: Password


class PasswordChanged(msgspec.Struct):
    revoked_tokens: int


# -- API keys ---------------------------------------------------------------------------

# A key's name: 1-100 characters, none of them a control character (PostgreSQL stores no
# NUL, and a name is shown in lists).
KeyName = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+" + _END)]


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    name: KeyName


class KeyOut(msgspec.Struct):
    id: int
    name: str
    prefix: str  # the key's first characters: enough to recognise it, not to use it
    created_at: dt.datetime
    last_used_at: dt.datetime | None  # to the minute; None: never used


class KeyCreated(msgspec.Struct):
    id: int
    name: str
    prefix: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    key: str  # the key itself: shown this once, only its hash is kept


class KeyList(msgspec.Struct):
    keys: list[KeyOut]  # newest first
    limit: int  # how many keys an account may hold (CHEXRAY_API_KEYS_PER_USER)


# -- predictions and studies ------------------------------------------------------------


class Finding(msgspec.Struct):
    name: str
    probability: float
    threshold: float
    present: bool
    cam_probability: float  # the CAM network's own estimate


class Member(msgspec.Struct):
    name: str
    probabilities: dict[str, float]


class DicomInfo(msgspec.Struct, omit_defaults=True):
    """What a DICOM source says it is (never whose it is): the attributes the intended use
    is judged by. Absent attributes are left out."""

    Modality: str | None = None
    BodyPartExamined: str | None = None
    ViewPosition: str | None = None
    PatientOrientation: str | None = None
    SOPClassUID: str | None = None


class ImageInfo(msgspec.Struct):
    format: str
    width: int
    height: int
    bit_depth: int
    notes: list[str]
    dicom: DicomInfo | None = None  # DICOM sources only


class Timings(msgspec.Struct):
    decode_ms: float
    preprocess_ms: float
    queue_ms: float
    compute_ms: float
    batch_size: int
    heatmap_ms: float | None = None
    total_ms: float | None = None


class Urls(msgspec.Struct):
    study: str
    image: str
    heatmap: str
    heatmaps: dict[str, str]  # per finding
    # Studies analysed from a DICOM: their results as DICOM objects (application/dicom)
    # in the source's study, and where their transfer to the PACS stands.
    dicom_sr: str | None = None
    dicom_heatmaps: dict[str, str] | None = None  # per finding
    pacs: str | None = None


class PacsTransferOut(msgspec.Struct):
    """A study's results on their way to the PACS: pending (waiting for a try, the next at
    `next_try_at`), sent, or failed (`detail` says why; POST to this URL to send again)."""

    status: Literal["pending", "sent", "failed"]
    attempts: int
    detail: str
    updated_at: dt.datetime
    next_try_at: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    sent_instances: list[str] = []


class StudyOut(msgspec.Struct):
    id: str | None  # None: not stored
    stored: bool
    title: str
    created_at: dt.datetime
    model_version: str
    trained: bool
    findings: list[Finding]
    present: list[str]
    members: list[Member]
    image: ImageInfo
    timings: Timings
    urls: Urls | None = None
    heatmap_png_base64: str | None = None
    image_png_base64: str | None = None  # the decoded X-ray, with image=inline
    # Raw class activation maps [finding][row][col] (ReLU and scaling are the viewer's),
    # for drawing heatmaps client-side at any opacity.
    cam_maps: list[list[list[float]]] = []
    warnings: list[str] = []
    # Which backend, device and precision answered (e.g. openvino-cpu-bf16, bf16); null for
    # studies stored before this was recorded.
    backend: str | None = None
    precision: str | None = None
    # Anonymous stored studies: when they are deleted, and (in the creating answer only)
    # the secret that deletes them sooner: DELETE the study with header X-Delete-Token.
    expires_at: dt.datetime | None = None
    delete_token: str | None = None
    # Studies analysed from a DICOM, with a PACS configured: where their results stand.
    pacs: PacsTransferOut | None = None


class StudySummary(msgspec.Struct):
    id: str
    title: str
    created_at: dt.datetime
    present: list[str]
    probabilities: dict[str, float]
    urls: Urls


class StudyPage(msgspec.Struct):
    items: list[StudySummary]
    page: int
    per_page: int
    total: int
    pages: int


# -- models and operations --------------------------------------------------------------


class MemberInfo(msgspec.Struct):
    name: str
    architecture: str
    input_size: tuple[int, int]
    trained: bool
    file: str
    size_bytes: int
    parity_max_abs_diff: float
    weights: dict[str, float]  # normalised, per finding


class CalibrationInfo(msgspec.Struct):
    """Set when `chexray calibrate` chose the weights and thresholds being served."""

    created: str
    data: str  # the labelled CSV's file name
    images: int
    previous_version: str
    held_out_auc: dict[str, float]  # per finding, the served weighting's cross-validated AUC


class PrecisionCheckInfo(msgspec.Struct):
    """The served precision compared with onnxruntime fp32 on the check set."""

    passed: bool
    images: int
    check_set: str
    max_abs_diff: dict[str, float]  # per finding
    calls_differ: int
    calls_differ_outside_margin: int
    tolerance: float
    margin: float
    created: str
    machine: str


class ModelsOut(msgspec.Struct):
    version: str
    preset: str
    trained: bool
    provider: str
    backend: str  # onnxruntime or openvino
    precision: str  # fp32, bf16, fp16 or int8
    served_file: str  # the graph file the backend runs
    findings: list[str]
    thresholds: dict[str, float]
    thresholds_source: str
    input_size: tuple[int, int]
    members: list[MemberInfo]
    cam_network: MemberInfo
    fused_file: str
    max_batch: int
    max_wait_ms: float
    calibration: CalibrationInfo | None = None
    precision_check: PrecisionCheckInfo | None = None  # None for onnxruntime fp32 itself


class Health(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "ready", "not_ready"]
    checks: dict[str, bool] = {}
    error: str | None = None  # why the models failed to load
