"""POST /api/v1/predictions: analyse one X-ray."""

from __future__ import annotations

from typing import Literal

from litestar import Request, post
from litestar.params import Parameter

from server.api.auth import client_key
from server.api.deps import PrincipalDep, ServiceDep
from server.api.errors import ApiError
from server.api.openapi import ANYONE, UPLOAD, UploadOperation, errors
from server.api.responses import study_out
from server.api.schemas import StudyOut
from server.api.uploads import read_upload
from server.service import AnalyseOptions


@post(
    "/api/v1/predictions",
    status_code=200,
    tags=["predictions"],
    operation_class=UploadOperation,
    security=ANYONE,
    responses=errors(*UPLOAD, 401, 403, 429, 507),
)
async def create_prediction(
    request: Request,
    service: ServiceDep,
    principal: PrincipalDep,
    store: bool = Parameter(
        default=False, description="keep an anonymous study (reachable by its id, never listed)"
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
) -> StudyOut:
    """Analyse a chest X-ray: PNG, JPEG or DICOM, as multipart (`image` file, optional
    `title`) or as the raw body (`image/png`, `image/jpeg`, `application/dicom`).

    Signed-in users' predictions become studies in their history; anonymous ones are
    stored only with `store=true`, for a limited time (`expires_at`), and their answer
    carries `delete_token`, the one-time secret that deletes them
    (`DELETE /api/v1/studies/{id}` with header `X-Delete-Token`). 503 with Retry-After
    when the wait for the engine would exceed the server's budget.
    """
    stored = principal is not None or store
    mode = heatmap or ("url" if stored else "inline")
    if mode == "url" and not stored:
        raise ApiError(
            400,
            "heatmap_url_needs_storage",
            "heatmap=url needs a stored study: sign in or add store=true",
        )
    # Admitted (or refused with 503) before the body is read: refusing costs nothing.
    with service.predictions.admit():
        data, title = await read_upload(request)
        options = AnalyseOptions(
            title=title,
            owner_id=principal.user_id if principal else None,
            store=stored,
            heatmap=mode == "inline",
            image=image == "inline",
            client=client_key(request),
        )
        analysis = await service.predictions.analyse(data, options)
    return study_out(request, analysis.result, analysis)
