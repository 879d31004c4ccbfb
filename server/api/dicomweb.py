"""DICOMweb into CheXray: STOW-RS (PS3.18 10.5), a thin translator between HTTP and
`service.intake`, so a PACS or a modality can send instances and have them analysed.

    POST /dicomweb/studies               multipart/related; type="application/dicom"
    POST /dicomweb/studies/{study_uid}   the same, every instance of that study

Signed-in callers only: a bearer token or an API key (Authorization, or X-API-Key). Each
instance is analysed on its own and kept in the caller's history; its DICOM results go to
the PACS when one is configured. Query `force=true` analyses instances outside the intended
use (lateral views, other body parts or modalities), with a warning.

The answer is the Store Instances Response (application/dicom+json): ReferencedSOPSequence
for the analysed instances (RetrieveURL: the CheXray study), FailedSOPSequence for the
refused ones with their FailureReason; 200 when all were analysed, 202 when some, 409 when
none. Each item also carries CheXray's error code and message, or its warnings, in the
private block "CHEXRAY" of group 0009 (0009,xx01 code, 0009,xx02 text), and each refusal
an HTTP Warning header.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext

from litestar import Request, Response, Router, post
from litestar.params import FromPath, Parameter

from server.api.auth import API_KEYS, audit_context, client_key, provide_auth
from server.api.deps import PrincipalDep, ServiceDep
from server.api.errors import ApiError
from server.pacs.multipart import decode_related
from server.service import AuditContext, InstanceOutcome, Service
from server.settings import Settings

DICOM_JSON = "application/dicom+json"
PRIVATE_CREATOR = "CHEXRAY"
MAX_PARTS = 1000


def _item(outcome: InstanceOutcome, retrieve_url: str | None) -> object:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid or None
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid or None
    if outcome.failure_reason is not None:
        item.FailureReason = outcome.failure_reason
    if retrieve_url:
        item.RetrieveURL = retrieve_url
    text = outcome.message or "; ".join(outcome.warnings)
    if outcome.code or text:
        block = item.private_block(0x0009, PRIVATE_CREATOR, create=True)
        if outcome.code:
            block.add_new(0x01, "LO", outcome.code)
        if text:
            block.add_new(0x02, "LT", text[:10240])
    return item


def store_response(request: Request, outcomes: list[InstanceOutcome]) -> bytes:
    """The Store Instances Response as DICOM JSON."""
    from pydicom.dataset import Dataset

    reverse = request.app.route_reverse
    base = str(request.base_url).rstrip("/")
    ds = Dataset()
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    if stored:
        ds.ReferencedSOPSequence = [
            _item(o, base + reverse("study", study_id=o.study_id)) for o in stored
        ]
    if failed:
        ds.FailedSOPSequence = [_item(o, None) for o in failed]
    return ds.to_json().encode()


def _warning(outcome: InstanceOutcome) -> str:
    # RFC 7234 warn-text is a quoted string: no quotes or line breaks inside.
    text = f"{outcome.sop_instance_uid or 'an instance'}: {outcome.code}: {outcome.message}"
    text = " ".join(text.replace('"', "'").split())[:300]
    return f'299 chexray "{text}"'


def _check_content_type(value: str) -> None:
    kind, _, params = value.partition(";")
    if kind.strip().lower() != "multipart/related":
        raise ApiError(
            415,
            "unsupported_media_type",
            'STOW-RS takes multipart/related; type="application/dicom", one DICOM file per part',
        )
    types = [
        p.split("=", 1)[1].strip().strip('"').lower()
        for p in params.split(";")
        if p.strip().lower().startswith("type=")
    ]
    if types and types[0] != "application/dicom":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"parts of type {types[0]} are not accepted: send DICOM files "
            '(multipart/related; type="application/dicom")',
        )


async def _store(
    request: Request,
    service: Service,
    principal: PrincipalDep,
    force: bool,
    study_uid: str | None,
) -> Response[bytes]:
    auth = await provide_auth(principal)
    content_type = request.headers.get("content-type", "")
    _check_content_type(content_type)
    client = client_key(request)
    audit = audit_context(request, auth, "dicomweb")
    # One place with the engine before the body is read, the rest once it is counted.
    with service.predictions.admit(audit=audit):
        body = await request.body()
        parts = decode_related(body, content_type, max_parts=MAX_PARTS)
        del body
        more = len(parts) - 1
        with service.predictions.admit(more, audit=audit) if more > 0 else nullcontext():
            outcomes = await asyncio.gather(
                *(
                    _one(
                        service,
                        part.content_type,
                        part.data,
                        auth.user_id,
                        force,
                        study_uid,
                        client,
                        audit,
                    )
                    for part in parts
                )
            )
    analysed = sum(o.stored for o in outcomes)
    status = 200 if analysed == len(outcomes) else 202 if analysed else 409
    warnings = [_warning(o) for o in outcomes if not o.stored][:20]
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    return Response(
        store_response(request, list(outcomes)),
        status_code=status,
        media_type=DICOM_JSON,
        headers=headers,
    )


async def _one(
    service: Service,
    part_type: str,
    data: bytes,
    owner_id: int,
    force: bool,
    study_uid: str | None,
    client: str,
    audit: AuditContext,
) -> InstanceOutcome:
    kind = part_type.split(";")[0].strip().lower()
    if kind and kind != "application/dicom":
        return InstanceOutcome(
            "",
            "",
            failure_reason=0xC000,
            code="unsupported_media_type",
            message=f"a part of type {kind}: only application/dicom parts are analysed",
        )
    return await service.intake.analyse(data, owner_id, force, study_uid, client, audit=audit)


FORCE = Parameter(
    default=False,
    description="analyse instances outside the intended use too (with a warning)",
)


@post("/studies", opt=API_KEYS, name="stow")
async def stow(
    request: Request, service: ServiceDep, principal: PrincipalDep, force: bool = FORCE
) -> Response[bytes]:
    """Store instances (STOW-RS): each analysed and kept in the caller's history."""
    return await _store(request, service, principal, force, None)


@post("/studies/{study_uid:str}", opt=API_KEYS, name="stow_study")
async def stow_study(
    request: Request,
    service: ServiceDep,
    principal: PrincipalDep,
    study_uid: FromPath[str],
    force: bool = FORCE,
) -> Response[bytes]:
    """Store instances of one study (STOW-RS); an instance of another study is refused."""
    return await _store(request, service, principal, force, study_uid)


def router(settings: Settings) -> Router:
    """The /dicomweb routes and their body limit (CHEXRAY_MAX_STOW_BYTES)."""
    return Router(
        path="/dicomweb",
        route_handlers=[stow, stow_study],
        request_max_body_size=settings.max_stow_bytes,
        # DICOMweb's own standard (PS3.18) documents these routes; CheXray's OpenAPI
        # document describes its own API.
        include_in_schema=False,
    )
