"""One X-ray through the engine, into the store, out as a response body.

Shared by the v1 predictions endpoint and the seed-compatible uploads.
"""

from __future__ import annotations

import base64
import time

import cv2
import numpy as np

from server.api.schemas import Finding, ImageInfo, Member, StudyOut, Timings, Urls
from server.cam.render import encode_png
from server.runtime.engine import Engine, Prediction
from server.runtime.manifest import FINDINGS
from server.store import studies
from server.store.db import Database
from server.store.media import MediaStore
from server.store.models import Study


def slug(finding: str) -> str:
    return finding.lower().replace(" ", "_")


SLUGS = {slug(f): f for f in FINDINGS}


def present(calls) -> list[str]:
    """The findings called present, in FINDINGS order."""
    return [f for f, c in zip(FINDINGS, calls, strict=True) if c]


def urls(study_id: str) -> Urls:
    base = f"/api/v1/studies/{study_id}"
    return Urls(
        study=base,
        image=f"{base}/image",
        heatmap=f"{base}/heatmap",
        heatmaps={f: f"{base}/heatmap/{slug(f)}" for f in FINDINGS},
    )


def study_from(prediction: Prediction, study_id: str, owner_id: int | None, title: str) -> Study:
    p = prediction
    t = p.timings
    return Study(
        id=study_id,
        owner_id=owner_id,
        title=title,
        model_version=p.model_version,
        trained=p.trained,
        probabilities=[float(x) for x in p.probabilities],
        calls=[bool(c) for c in p.calls],
        thresholds=list(p.thresholds),
        cam_probabilities=[float(x) for x in p.cam_probabilities],
        member_probabilities={k: [float(x) for x in v] for k, v in p.member_probabilities.items()},
        cam_maps=np.asarray(p.cam_maps, np.float32).round(6).tolist(),
        present="|" + "".join(f"{f}|" for f in present(p.calls)),
        image_format=p.image.format,
        width=p.image.width,
        height=p.image.height,
        bit_depth=p.image.bit_depth,
        notes=list(p.image.notes),
        timings={
            "decode_ms": t.decode_ms,
            "preprocess_ms": t.preprocess_ms,
            "queue_ms": t.queue_ms,
            "compute_ms": t.compute_ms,
            "batch_size": t.batch_size,
        },
    )


def study_out(
    study: Study,
    stored: bool,
    heatmap_b64: str | None = None,
    extra_timings: dict | None = None,
    image_b64: str | None = None,
) -> StudyOut:
    warnings = []
    if not study.trained:
        warnings.append(
            "the models are not trained (random weights): these probabilities are meaningless"
        )
    return StudyOut(
        id=study.id if stored else None,
        stored=stored,
        title=study.title,
        created_at=study.created_at,
        model_version=study.model_version,
        trained=study.trained,
        findings=[
            Finding(
                f,
                study.probabilities[i],
                study.thresholds[i],
                study.calls[i],
                study.cam_probabilities[i],
            )
            for i, f in enumerate(FINDINGS)
        ],
        present=present(study.calls),
        members=[
            Member(name, dict(zip(FINDINGS, probs, strict=True)))
            for name, probs in study.member_probabilities.items()
        ],
        image=ImageInfo(
            study.image_format, study.width, study.height, study.bit_depth, study.notes
        ),
        timings=Timings(**{**study.timings, **(extra_timings or {})}),
        urls=urls(study.id) if stored else None,
        heatmap_png_base64=heatmap_b64,
        image_png_base64=image_b64,
        cam_maps=study.cam_maps,
        warnings=warnings,
    )


async def analyse(
    engine: Engine,
    db: Database,
    media: MediaStore,
    data: bytes,
    *,
    title: str,
    owner_id: int | None,
    store: bool,
    inline_heatmap: bool,
    inline_image: bool = False,
) -> tuple[StudyOut, Study]:
    """Predict; store the decoded image (PNG: never the DICOM, so no patient data at rest),
    the combined heatmap and the study when asked; return the response body."""
    start = time.perf_counter()
    prediction = await engine.predict(data)
    study_id = studies.new_study_id()
    study = study_from(prediction, study_id, owner_id, title)
    heat = None
    heatmap_ms = None
    if store or inline_heatmap:
        t = time.perf_counter()
        heat = await engine.heatmap(prediction)
        heatmap_ms = (time.perf_counter() - t) * 1e3
    image_png = None
    if store or inline_image:
        image_png = await engine.run_cpu(encode_png, prediction.image.pixels)
    if store:
        await db.run(media.write, study_id, "image.png", image_png)
        await db.run(media.write, study_id, "heatmap.png", heat)
        try:
            study = await db.call(studies.add_study, study)
        except Exception:
            await db.run(media.delete_study, study_id)
            raise
    extra = {"heatmap_ms": heatmap_ms, "total_ms": (time.perf_counter() - start) * 1e3}
    b64 = base64.b64encode(heat).decode() if (inline_heatmap and heat is not None) else None
    image_b64 = base64.b64encode(image_png).decode() if inline_image and image_png else None
    return study_out(study, store, b64, extra, image_b64), study


async def study_heatmap(
    engine: Engine, db: Database, media: MediaStore, study: Study, finding: str | None
) -> bytes:
    """The stored combined heatmap, or one finding's, rendered once and kept."""
    name = "heatmap.png" if finding is None else f"heatmap-{slug(finding)}.png"
    cached = await db.run(media.read, study.id, name)
    if cached is not None:
        return cached
    raw = await db.run(media.read, study.id, "image.png")
    if raw is None:
        raise FileNotFoundError(study.id)
    pixels = await engine.run_cpu(
        lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE), raw
    )
    png = await engine.render_heatmap(
        pixels,
        np.asarray(study.cam_maps, np.float32),
        np.asarray(study.probabilities),
        np.asarray(study.calls),
        finding,
    )
    await db.run(media.write, study.id, name, png)
    return png
