"""Health, readiness, Prometheus metrics and the model summary."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.deps import ServiceDep, SettingsDep
from server.api.openapi import NOT_READY, errors
from server.api.schemas import (
    CalibrationInfo,
    Health,
    MemberInfo,
    ModelsOut,
    PrecisionCheckInfo,
)
from server.service import FINDINGS, Calibration, PrecisionCheck


@get("/health/live", tags=["operations"])
async def live() -> Health:
    """The process is up."""
    return Health("ok")


@get("/health/ready", tags=["operations"], responses=NOT_READY)
async def ready(service: ServiceDep) -> Response[Health]:
    """Models loaded, warm-up done and the database reachable; 503 otherwise."""
    checks, error = await service.readiness()
    ok = all(checks.values())
    body = Health("ready" if ok else "not_ready", checks, error)
    return Response(body, status_code=200 if ok else 503)


@get("/metrics", tags=["operations"], media_type=CONTENT_TYPE_LATEST)
async def metrics(state: State) -> Response[bytes]:
    """Prometheus text format: HTTP by route and status, and the engine's metrics."""
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


@get("/api/v1/models", tags=["models"], responses=errors(503))
async def models(service: ServiceDep, settings: SettingsDep) -> ModelsOut:
    """What is being served: members, sizes, trained or not, weights, thresholds, version."""
    serving = service.serving()
    m = serving.manifest
    directory = settings.model_dir

    def size(rel: str) -> int:
        path = directory / rel
        return path.stat().st_size if path.is_file() else 0

    members = [
        MemberInfo(
            x.name,
            x.architecture,
            x.input_size,
            x.trained,
            x.file,
            size(x.file),
            x.parity.max_abs_diff,
            dict(zip(FINDINGS, m.weights_normalised[i], strict=True)),
        )
        for i, x in enumerate(m.members)
    ]
    c = m.cam
    cam = MemberInfo(
        c.name,
        c.architecture,
        c.input_size,
        c.trained,
        c.file,
        size(c.file),
        c.parity.max_abs_diff,
        {},
    )
    h, w = (int(d) for d in m.input.shape[1:])
    return ModelsOut(
        version=m.version,
        preset=m.preset,
        trained=m.trained,
        provider=serving.provider,
        backend=serving.backend,
        precision=serving.precision,
        served_file=serving.graph_file,
        findings=list(FINDINGS),
        thresholds=dict(zip(FINDINGS, m.thresholds.values, strict=True)),
        thresholds_source=m.thresholds.source,
        input_size=(h, w),
        members=members,
        cam_network=cam,
        fused_file=m.fused.file,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        calibration=_calibration(m.calibration),
        precision_check=_precision_check(serving.precision_check),
    )


def _precision_check(p: PrecisionCheck | None) -> PrecisionCheckInfo | None:
    if p is None:
        return None
    return PrecisionCheckInfo(
        p.passed,
        p.images,
        p.check_set,
        dict(zip(FINDINGS, p.max_abs_diff, strict=True)),
        p.calls_differ,
        p.calls_differ_outside_margin,
        p.tolerance,
        p.margin,
        p.created,
        p.machine,
    )


def _calibration(c: Calibration | None) -> CalibrationInfo | None:
    if c is None:
        return None
    held_out = {f.finding: f.served.mean for f in c.findings}
    return CalibrationInfo(c.created, Path(c.data).name, c.images, c.previous_version, held_out)
