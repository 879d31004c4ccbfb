"""Analyse an X-ray, keep it, show it again: what every front end asks of CheXray.

analyse: bytes -> engine (decode, batch, fused graph) -> heatmap and image PNGs drawn from
the engine's outputs (only those asked for) -> the store (only when kept) -> Analysis.
Stored studies: fetch with ownership, list, delete, their image and heatmaps (drawn once
per finding from the stored image and CAM maps, then kept).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

from server import tracing
from server.cam.renderer import Renderer
from server.errors import NotFound
from server.runtime.findings import slug
from server.runtime.state import EngineState
from server.service.results import Result, result_from_prediction, result_from_study, study_row
from server.store.models import Study
from server.store.store import Store
from server.store.studies import new_study_id

IMAGE = "image.png"
HEATMAP = "heatmap.png"


def heatmap_file(finding: str | None) -> str:
    return HEATMAP if finding is None else f"heatmap-{slug(finding)}.png"


@dataclass(frozen=True)
class AnalyseOptions:
    title: str = ""
    owner_id: int | None = None
    store: bool = False  # keep it; signed-in callers always do (the front end decides)
    heatmap: bool = False  # draw the combined heatmap PNG for the answer
    image: bool = False  # encode the decoded X-ray as PNG for the answer


@dataclass(frozen=True)
class Analysis:
    result: Result
    heatmap_png: bytes | None  # when asked for
    image_png: bytes | None  # when asked for
    heatmap_ms: float | None
    total_ms: float


def not_found(what: str = "study") -> NotFound:
    return NotFound("not_found", f"no such {what}")


class Predictions:
    def __init__(self, engines: EngineState, store: Store, renderer: Renderer) -> None:
        self.engines = engines
        self.store = store
        self.renderer = renderer

    def admit(self) -> AbstractContextManager[None]:
        """A place for one analysis, taken before its bytes are read (Overloaded: 503 with
        Retry-After when the wait would exceed the budget, or while shutting down)."""
        return self.engines.require().admission.admit()

    async def analyse(self, data: bytes, options: AnalyseOptions) -> Analysis:
        """Predict; when stored, keep the decoded image as PNG (never the DICOM, so no patient
        data at rest) and the combined heatmap beside the study row."""
        start = time.perf_counter()
        prediction = await self.engines.require().predict(data)
        keep = options.store
        heat = image = heatmap_ms = None
        if keep or options.heatmap:
            t = time.perf_counter()
            p = prediction
            with tracing.span("heatmap"):
                heat = await self.renderer.heatmap(
                    p.image.pixels, p.cam_maps, p.probabilities, p.calls
                )
            heatmap_ms = (time.perf_counter() - t) * 1e3
        if keep or options.image:
            image = await self.renderer.encode_png(prediction.image.pixels)
        study_id = new_study_id() if keep else None
        result = result_from_prediction(prediction, study_id, options.owner_id, options.title)
        if keep:
            assert heat is not None and image is not None
            with tracing.span("store"):
                row = study_row(result)
                stored = await self.store.add_study(row, {IMAGE: image, HEATMAP: heat})
            result = result_from_study(stored)
        return Analysis(
            result,
            heat if options.heatmap else None,
            image if options.image else None,
            heatmap_ms,
            (time.perf_counter() - start) * 1e3,
        )

    # -- stored studies --------------------------------------------------------------------

    async def study(self, study_id: str, user_id: int | None) -> Study:
        """The study if the caller may see it (its owner, or anyone holding an anonymous
        study's id); NotFound otherwise, exactly as for a missing one."""
        study = await self.store.get_study(study_id, user_id)
        if study is None:
            raise not_found()
        return study

    async def result(self, study_id: str, user_id: int | None) -> Result:
        return result_from_study(await self.study(study_id, user_id))

    async def history(
        self, user_id: int, page: int, per_page: int, finding: str | None
    ) -> tuple[list[Result], int]:
        rows, total = await self.store.list_studies(user_id, page, per_page, finding)
        return [result_from_study(r) for r in rows], total

    async def delete(self, study_id: str, user_id: int) -> None:
        study = await self.study(study_id, user_id)
        if study.owner_id is None:
            raise not_found()  # anonymous studies have no owner who could delete them
        if not await self.store.delete_study(study.id):
            raise not_found()  # deleted by a concurrent request meanwhile

    async def image(self, study: Study) -> bytes:
        """The X-ray as decoded (PNG, 8-bit grey), of a study from `study()`."""
        data = await self.store.read_file(study.id, IMAGE)
        if data is None:
            raise not_found("image")
        return data

    async def heatmap(self, study: Study, finding: str | None) -> bytes:
        """The stored combined heatmap, or one finding's, drawn once and kept; of a study
        from `study()`."""
        name = heatmap_file(finding)
        cached = await self.store.read_file(study.id, name)
        if cached is not None:
            return cached
        raw = await self.store.read_file(study.id, IMAGE)
        if raw is None:
            raise not_found("image")
        png = await self.renderer.heatmap(
            await self.renderer.decode_grey(raw),
            np.asarray(study.cam_maps, np.float32),
            np.asarray(study.probabilities),
            np.asarray(study.calls),
            finding,
        )
        await self.store.write_file(study.id, name, png)
        return png
