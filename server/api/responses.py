"""Service results -> response bodies. Links come from the routes themselves (reversed by
name), so a path is written once, in its handler's decorator."""

from __future__ import annotations

import base64

from litestar import Request

from server.api.schemas import (
    DicomInfo,
    Finding,
    ImageInfo,
    Member,
    PacsTransferOut,
    StudyOut,
    StudySummary,
    Timings,
    Urls,
)
from server.service import FINDINGS, Analysis, Result, Transfer, slug


def urls(request: Request, study_id: str, dicom: bool = False) -> Urls:
    """The study's links; `dicom`: it was analysed from a DICOM, so it has DICOM results."""
    reverse = request.app.route_reverse
    extra = {}
    if dicom:
        extra = {
            "dicom_sr": reverse("study_dicom_sr", study_id=study_id),
            "dicom_heatmaps": {
                f: reverse("study_dicom_heatmap", study_id=study_id, finding=slug(f))
                for f in FINDINGS
            },
            "pacs": reverse("study_pacs", study_id=study_id),
        }
    return Urls(
        study=reverse("study", study_id=study_id),
        image=reverse("study_image", study_id=study_id),
        heatmap=reverse("study_heatmap", study_id=study_id),
        heatmaps={
            f: reverse("study_finding_heatmap", study_id=study_id, finding=slug(f))
            for f in FINDINGS
        },
        **extra,
    )


def pacs_out(t: Transfer) -> PacsTransferOut:
    return PacsTransferOut(
        t.status,  # type: ignore[arg-type]
        t.attempts,
        t.detail,
        t.updated_at,
        t.next_try_at,
        t.sent_at,
        list(t.sent_instances),
    )


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def study_out(
    request: Request,
    r: Result,
    analysis: Analysis | None = None,
    pacs: Transfer | None = None,
) -> StudyOut:
    """A stored study, or a fresh analysis (with what was drawn for it and its timings)."""
    dicom = r.image.dicom
    extra = {}
    if analysis is not None:
        extra = {"heatmap_ms": analysis.heatmap_ms, "total_ms": analysis.total_ms}
    return StudyOut(
        id=r.id,
        stored=r.stored,
        title=r.title,
        created_at=r.created_at,
        model_version=r.model_version,
        trained=r.trained,
        findings=[
            Finding(f, r.probabilities[i], r.thresholds[i], r.calls[i], r.cam_probabilities[i])
            for i, f in enumerate(FINDINGS)
        ],
        present=r.present,
        members=[
            Member(name, dict(zip(FINDINGS, probs, strict=True)))
            for name, probs in r.member_probabilities.items()
        ],
        image=ImageInfo(
            r.image.format,
            r.image.width,
            r.image.height,
            r.image.bit_depth,
            r.image.notes,
            DicomInfo(**dicom) if dicom is not None else None,
        ),
        timings=Timings(**{**r.timings, **extra}),
        urls=urls(request, r.id, dicom is not None) if r.id is not None else None,
        heatmap_png_base64=_b64(analysis.heatmap_png) if analysis else None,
        image_png_base64=_b64(analysis.image_png) if analysis else None,
        cam_maps=r.cam_maps,
        warnings=r.warnings,
        backend=r.backend,
        precision=r.precision,
        expires_at=r.expires_at,
        delete_token=analysis.delete_token if analysis else None,
        pacs=pacs_out(pacs) if pacs is not None else None,
    )


def study_summary(request: Request, r: Result) -> StudySummary:
    assert r.id is not None
    return StudySummary(
        r.id,
        r.title,
        r.created_at,
        r.present,
        dict(zip(FINDINGS, r.probabilities, strict=True)),
        urls(request, r.id, r.image.dicom is not None),
    )
