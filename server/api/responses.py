"""Service results -> response bodies. Links come from the routes themselves (reversed by
name), so a path is written once, in its handler's decorator."""

from __future__ import annotations

import base64

from litestar import Request

from server.api.schemas import Finding, ImageInfo, Member, StudyOut, StudySummary, Timings, Urls
from server.service import FINDINGS, Analysis, Result, slug


def urls(request: Request, study_id: str) -> Urls:
    reverse = request.app.route_reverse
    return Urls(
        study=reverse("study", study_id=study_id),
        image=reverse("study_image", study_id=study_id),
        heatmap=reverse("study_heatmap", study_id=study_id),
        heatmaps={
            f: reverse("study_finding_heatmap", study_id=study_id, finding=slug(f))
            for f in FINDINGS
        },
    )


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def study_out(request: Request, r: Result, analysis: Analysis | None = None) -> StudyOut:
    """A stored study, or a fresh analysis (with what was drawn for it and its timings)."""
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
            r.image.format, r.image.width, r.image.height, r.image.bit_depth, r.image.notes
        ),
        timings=Timings(**{**r.timings, **extra}),
        urls=urls(request, r.id) if r.id is not None else None,
        heatmap_png_base64=_b64(analysis.heatmap_png) if analysis else None,
        image_png_base64=_b64(analysis.image_png) if analysis else None,
        cam_maps=r.cam_maps,
        warnings=r.warnings,
        backend=r.backend,
        precision=r.precision,
        expires_at=r.expires_at,
        delete_token=analysis.delete_token if analysis else None,
    )


def study_summary(request: Request, r: Result) -> StudySummary:
    assert r.id is not None
    return StudySummary(
        r.id,
        r.title,
        r.created_at,
        r.present,
        dict(zip(FINDINGS, r.probabilities, strict=True)),
        urls(request, r.id),
    )
