"""POST /api/v1/predictions: analyse one X-ray."""

from __future__ import annotations

from typing import Literal

from litestar import Request, post
from litestar.params import Parameter

from server.api.auth import API_KEYS, audit_context, client_key, require_caller
from server.api.deps import PrincipalDep, ServiceDep
from server.api.errors import ApiError, request_id
from server.api.openapi import INFERENCE, UPLOAD, UploadOperation, errors
from server.api.responses import study_out
from server.api.schemas import StudyOut
from server.api.uploads import read_upload
from server.service import AnalyseOptions


@post(
    "/api/v1/predictions",
    status_code=200,
    tags=["predictions"],
    operation_class=UploadOperation,
    security=INFERENCE,
    opt=API_KEYS,
    responses=errors(*UPLOAD, 401, 403, 404, 409, 429, 507),
)
async def create_prediction(
    request: Request,
    service: ServiceDep,
    principal: PrincipalDep,
    store: bool = Parameter(
        default=False,
        description="keep the study: an anonymous one (reachable by its id, never listed) or, "
        "with an API key, in the key owner's history",
    ),
    heatmap: Literal["inline", "url", "none"] | None = Parameter(
        default=None,
        description="inline: base64 PNG in the body (default when not stored); url: links "
        "only (default when stored); none",
    ),
    image: Literal["inline", "none"] = Parameter(
        default="none",
        description="inline: the decoded X-ray as a base64 PNG too (a DICOM's preview)",
    ),
    force: bool = Parameter(
        default=False,
        description="analyse a DICOM that says it is outside the intended use (a lateral "
        "view, another body part or modality) instead of refusing it with 422 "
        "`outside_intended_use`; the answer then carries a note",
    ),
    model_version: str | None = Parameter(
        default=None,
        description="answer with this model version: the one served, or a canary or shadow "
        "candidate while one is loaded (409 `version_not_loaded` for a version installed "
        "but not loaded, 404 `unknown_model_version` for one never installed); default: "
        "the version served (or, during a canary, the candidate for its share of requests)",
    ),
) -> StudyOut:
    """Analyse a chest X-ray: PNG, JPEG or DICOM, as multipart (`image` file, optional
    `title`) or as the raw body (`image/png`, `image/jpeg`, `application/dicom`).

    Signed-in users' predictions become studies in their history; with an API key only
    with `store=true` (then in the key owner's history); anonymous ones are stored only with
    `store=true`, for a limited time (`expires_at`), and their answer carries
    `delete_token`, the one-time secret that deletes them (`DELETE /api/v1/studies/{id}`
    with header `X-Delete-Token`). With CHEXRAY_REQUIRE_AUTH, anonymous callers get 401.
    503 with Retry-After when the wait for the engine would exceed the server's budget.

    A DICOM is judged by what it says it is: the networks were trained on frontal chest
    radiographs, so a lateral view, another body part or a modality other than CR/DX is
    refused (422 `outside_intended_use`) unless `force=true`. Its Modality,
    BodyPartExamined, ViewPosition and PatientOrientation come back under `image.dicom`
    (never who the patient is); a stored DICOM study has its results as DICOM objects too
    (`urls.dicom_sr`, `urls.dicom_heatmaps`).
    """
    # The settings through the service, not as a dependency of their own: Litestar resolves
    # sibling dependencies in a task group, 0.05 ms of the event loop on the busiest route.
    require_caller(principal, service.settings)
    by_key = principal is not None and principal.by_key
    # A key's predictions are a service's: kept only when asked, and their heatmaps come
    # inline by default, since a key cannot read a study's URLs.
    stored = store or (principal is not None and not by_key)
    mode = heatmap or ("url" if stored and not by_key else "inline")
    if mode == "url" and not stored:
        raise ApiError(
            400,
            "heatmap_url_needs_storage",
            "heatmap=url needs a stored study: sign in or add store=true",
        )
    # Admitted (or refused with 503) before the body is read: refusing costs nothing.
    audit = audit_context(request, principal, "rest")
    with service.predictions.admit(
        model_version=model_version or "", key=request_id(request), audit=audit
    ):
        data, title = await read_upload(request)
        options = AnalyseOptions(
            title=title,
            owner_id=principal.user_id if principal else None,
            store=stored,
            heatmap=mode == "inline",
            image=image == "inline",
            client=client_key(request),
            force=force,
            audit=audit,
        )
        analysis = await service.predictions.analyse(data, options)
    result = analysis.result
    # A stored DICOM's results were just queued for the PACS, when one is configured.
    queued = result.stored and result.image.dicom is not None and service.pacs.enabled
    pacs = await service.pacs.status(result.id) if queued and result.id else None
    return study_out(request, result, analysis, pacs)
