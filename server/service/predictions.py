"""Analyse an X-ray, keep it, show it again: what every front end asks of CheXray.

analyse: bytes -> engine (decode, batch, fused graph) -> heatmap and image PNGs drawn from
the engine's outputs (only those asked for) -> the store (only when kept) -> Analysis.
Stored studies: fetch with ownership, list, delete, their image and heatmaps (drawn once
per finding from the stored image and CAM maps, then kept).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
import numpy as np

from server import tracing
from server.cam.renderer import Renderer
from server.counting import Counts, MemoryCounts, Window
from server.errors import (
    ChexrayError,
    InsufficientStorage,
    NotFound,
    QuotaExceeded,
    Unauthenticated,
)
from server.runtime.decode import detect_format
from server.runtime.engine import Prediction
from server.runtime.findings import FINDINGS, slug
from server.runtime.state import EngineState
from server.service.audit import AuditContext, AuditLog, entry, now, sha256
from server.service.dicom_results import (
    SOURCE_HEADER,
    header_bytes,
    heatmap_bytes,
    not_dicom,
    sr_bytes,
)
from server.service.results import Result, result_from_prediction, result_from_study, study_row
from server.store.media import IMAGE_FILE
from server.store.models import Study
from server.store.store import OwnerGone, Store
from server.store.studies import delete_token_matches, new_delete_token, new_study_id

IMAGE = IMAGE_FILE
HEATMAP = "heatmap.png"

log = logging.getLogger("chexray")


def heatmap_file(finding: str | None) -> str:
    return HEATMAP if finding is None else f"heatmap-{slug(finding)}.png"


@dataclass(frozen=True)
class AnalyseOptions:
    title: str = ""
    owner_id: int | None = None
    store: bool = False  # keep it; signed-in callers always do (the front end decides)
    heatmap: bool = False  # draw the combined heatmap PNG for the answer
    image: bool = False  # encode the decoded X-ray as PNG for the answer
    client: str | None = None  # the caller's address: anonymous studies are counted by it
    # Analyse a DICOM outside the intended use (server/runtime/intended_use.py) instead of
    # refusing it; its answer then says so.
    force: bool = False
    # Who asked, for the audit log (server/service/audit.py); None: not recorded.
    audit: AuditContext | None = None


@dataclass(frozen=True)
class Analysis:
    result: Result
    heatmap_png: bytes | None  # when asked for
    image_png: bytes | None  # when asked for
    heatmap_ms: float | None
    total_ms: float
    # An anonymous stored study's one-time deletion secret: only its hash is kept, so this
    # answer is the only place it ever appears.
    delete_token: str | None = None


def not_found(what: str = "study") -> NotFound:
    return NotFound("not_found", f"no such {what}")


class HourlyQuota:
    """At most `limit` events per key over the last hour, counted in `counts`: this
    process's memory, or the database that replicas share (server/counting.py). Blocking:
    called in a worker thread."""

    WINDOW_S = 3600.0

    def __init__(self, limit: int, counts: Counts) -> None:
        self.limit = limit
        self.counts = counts
        self.window = Window("anonymous", limit, self.WINDOW_S)

    def take(self, key: str) -> tuple[float | None, float | None]:
        """Count one event: (None, its time) when allowed, else (the seconds until one is,
        None), counting nothing."""
        with self.counts.scope([(self.window, key)]) as c:
            wait = c.wait(self.window, key)
            if wait is not None:
                return max(1.0, wait), None
            return None, c.add(self.window, key)

    def give_back(self, key: str, when: float) -> None:
        """Undo the `take` of `key` at `when` (the event did not happen after all)."""
        with self.counts.scope([(self.window, key)]) as c:
            c.remove(self.window, key, when)


class Predictions:
    def __init__(
        self,
        engines: EngineState,
        store: Store,
        renderer: Renderer,
        max_anonymous: int = 10_000,
        anonymous_per_address_hourly: int = 0,
        counts: Counts | None = None,
        on_dicom_stored: Callable[[str], Awaitable[None]] | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        """`max_anonymous`: anonymous studies kept at once (0: none);
        `anonymous_per_address_hourly`: per client address and hour (0: no limit), counted
        in `counts` (default: this process's memory); `on_dicom_stored`: called with the id
        of each study stored from a DICOM (the PACS link queues its results); `audit`:
        where each analysis with an AuditContext is recorded."""
        self.on_dicom_stored = on_dicom_stored
        self.audit = audit
        self.engines = engines
        self.store = store
        self.renderer = renderer
        self.max_anonymous = max_anonymous
        self.per_address = (
            HourlyQuota(anonymous_per_address_hourly, counts or MemoryCounts())
            if anonymous_per_address_hourly
            else None
        )

    async def _admit_anonymous(self, client: str | None) -> tuple[str, float] | None:
        """Refuse an anonymous study over a quota; the key and time counted, if any, to
        give back when nothing is kept after all."""
        if await self.store.count_anonymous() >= self.max_anonymous:
            raise InsufficientStorage(
                "anonymous_storage_full",
                f"this server keeps at most {self.max_anonymous} anonymous studies and has "
                "no room for another now: sign in (studies in a history are not limited "
                "this way), or analyse without store=true",
            )
        if self.per_address is None:
            return None
        key = client or "unknown"
        wait, when = await anyio.to_thread.run_sync(self.per_address.take, key)
        if wait is not None:
            raise QuotaExceeded(
                "anonymous_quota_exceeded",
                f"at most {self.per_address.limit} anonymous studies per client address and "
                "hour are kept: sign in, analyse without store=true, or retry later",
                retry_after=wait,
            )
        assert when is not None
        return key, when

    def _result(self, study: Study) -> Result:
        expires = self.store.expires_at(study.created_at, study.owner_id)
        return dataclasses.replace(result_from_study(study), expires_at=expires)

    @contextmanager
    def admit(
        self,
        count: int = 1,
        model_version: str = "",
        key: str | None = None,
        audit: AuditContext | None = None,
    ) -> Iterator[object]:
        """Places for `count` analyses, taken before their bytes are read (Overloaded: 503
        with Retry-After when the wait would exceed the budget, or while shutting down),
        with the model version that will answer them: `model_version` when pinned
        (Conflict `version_not_loaded`, NotFound `unknown_model_version`), else the served
        one or a canary's for its share of `key`s (the request id). A refusal is recorded
        in the audit log under `audit`, when given."""
        with ExitStack() as places:
            try:
                engine = places.enter_context(self.engines.admit(count, model_version, key))
            except ChexrayError as exc:
                if audit is not None and self.audit is not None:
                    served = model_version or self._served()["model_version"]
                    self.audit.append_nowait(entry(audit, now(), error=exc, model_version=served))
                raise
            yield engine

    def _served(self) -> dict[str, str | None]:
        engine = self.engines.engine
        return {"model_version": engine.manifest.version if engine is not None else None}

    def _auditing(self, options: AnalyseOptions) -> bool:
        return options.audit is not None and self.audit is not None and self.audit.enabled

    async def refused(self, data: bytes, options: AnalyseOptions, code: str) -> None:
        """Record an analysis refused before it reached the engine (a DICOM instance of
        another SOP class or study, an unreadable one) under `options.audit`."""
        if self._auditing(options):
            await self._record_refusal(data, options, now(), await sha256(data), code, None)

    async def _record_refusal(
        self,
        data: bytes,
        options: AnalyseOptions,
        started: dt.datetime,
        digest: str | None,
        error: ChexrayError | str,
        total_ms: float | None,
    ) -> None:
        assert options.audit is not None and self.audit is not None
        try:
            kind: str | None = detect_format(data)
        except ChexrayError:
            kind = None
        record = entry(
            options.audit,
            started,
            digest=digest,
            size=len(data),
            image_format=kind,
            forced=options.force,
            total_ms=total_ms,
            error=error,
            **self._served(),
        )
        try:
            await self.audit.append(record)
        except ChexrayError as exc:  # the refusal itself is what the caller hears about
            log.warning("audit log: a refusal (%s) was not recorded: %s", record["error_code"], exc)

    async def analyse(self, data: bytes, options: AnalyseOptions) -> Analysis:
        """Predict; when stored, keep the decoded image as PNG and the combined heatmap beside
        the study row, and for a DICOM its header without pixels (the patient and study its
        DICOM results must name; deleted with the study). An anonymous study is kept only
        within the quotas, and comes with its deletion secret.

        With `options.audit`, the analysis is recorded in the audit log, answered or
        refused; an answer leaves only once its record is committed (else Unavailable, and
        a study just kept for it is deleted again)."""
        if not self._auditing(options):
            return (await self._analyse_counted(data, options))[0]
        assert options.audit is not None and self.audit is not None
        started, start = now(), time.perf_counter()
        try:
            analysis, prediction = await self._analyse_counted(data, options)
        except Exception as exc:
            error = exc if isinstance(exc, ChexrayError) else "internal_error"
            ms = (time.perf_counter() - start) * 1e3
            await self._record_refusal(data, options, started, await sha256(data), error, ms)
            raise
        record = entry(
            options.audit,
            started,
            # Hashed beside the decoding (Engine._timed_prepare), off the event loop.
            digest=prediction.image.sha256 or await sha256(data),
            size=len(data),
            prediction=prediction,
            forced=options.force,
            total_ms=(time.perf_counter() - start) * 1e3,
        )
        try:
            await self.audit.append(record)
        except ChexrayError:
            if analysis.result.stored and analysis.result.id is not None:
                with anyio.CancelScope(shield=True):
                    await self.store.withdraw_study(analysis.result.id)
            raise
        return analysis

    async def _analyse_counted(
        self, data: bytes, options: AnalyseOptions
    ) -> tuple[Analysis, Prediction]:
        anonymous = options.store and options.owner_id is None
        counted = await self._admit_anonymous(options.client) if anonymous else None
        try:
            return await self._analyse(data, options, anonymous)
        except BaseException:
            if counted is not None and self.per_address is not None:
                try:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self.per_address.give_back, *counted)
                except ChexrayError as exc:  # the database is away: the count stands
                    log.warning("could not give back an anonymous quota count: %s", exc)
            raise

    async def _analyse(
        self, data: bytes, options: AnalyseOptions, anonymous: bool
    ) -> tuple[Analysis, Prediction]:
        start = time.perf_counter()
        # The engine this request was admitted to, even if the served version changed since.
        prediction = await self.engines.current().predict(data, options.force)
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
        delete_token = None
        if keep:
            assert heat is not None and image is not None
            row = study_row(result)
            if anonymous:
                delete_token, row.delete_token_hash = new_delete_token()
            files = {IMAGE: image, HEATMAP: heat}
            header = prediction.image.dicom_header
            if header is not None:
                try:
                    files[SOURCE_HEADER] = header_bytes(header)
                except Exception as exc:  # a header pydicom cannot write back (damaged values)
                    log.warning("DICOM header not kept, no DICOM results for it: %s", exc)
                    header = None
            try:
                with tracing.span("store"):
                    stored = await self.store.add_study(row, files)
            except OwnerGone:
                raise Unauthenticated(
                    "invalid_token",
                    "the account was deleted while this study was being kept; nothing was kept",
                ) from None
            result = self._result(stored)
            # Only an account's studies go to the PACS: an anonymous caller never writes there.
            if header is not None and stored.owner_id is not None and self.on_dicom_stored:
                await self.on_dicom_stored(stored.id)
        analysis = Analysis(
            result,
            heat if options.heatmap else None,
            image if options.image else None,
            heatmap_ms,
            (time.perf_counter() - start) * 1e3,
            delete_token,
        )
        return analysis, prediction

    # -- stored studies --------------------------------------------------------------------

    async def study(self, study_id: str, user_id: int | None) -> Study:
        """The study if the caller may see it (its owner, or anyone holding an anonymous
        study's id); NotFound otherwise, exactly as for a missing one."""
        study = await self.store.get_study(study_id, user_id)
        if study is None:
            raise not_found()
        return study

    async def result(self, study_id: str, user_id: int | None) -> Result:
        return self._result(await self.study(study_id, user_id))

    async def history(
        self, user_id: int, page: int, per_page: int, finding: str | None
    ) -> tuple[list[Result], int]:
        rows, total = await self.store.list_studies(user_id, page, per_page, finding)
        return [result_from_study(r) for r in rows], total

    async def delete(
        self, study_id: str, user_id: int | None, delete_token: str | None = None
    ) -> None:
        """The owner deletes their study; an anonymous study is deleted by whoever holds the
        secret its creating answer returned. Anyone else gets NotFound."""
        study = await self.study(study_id, user_id)
        if study.owner_id is None and (
            delete_token is None or not delete_token_matches(study, delete_token)
        ):
            raise not_found()
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
        try:
            kept = await self.store.write_file(study.id, name, png)
        except InsufficientStorage:
            # Keeping it is only a cache: answer it anyway, drawn again next time.
            log.warning("no space to keep heatmap %s of study %s", name, study.id)
            return png
        if not kept:
            raise not_found()  # deleted while it was being drawn
        return png

    # -- DICOM results ---------------------------------------------------------------------

    async def require_dicom(self, study: Study) -> None:
        """Conflict `not_dicom` unless the study has DICOM results (its source's header)."""
        await self._source_header(study)

    async def _source_header(self, study: Study) -> bytes:
        if study.image_format != "dicom":
            raise not_dicom()
        header = await self.store.read_file(study.id, SOURCE_HEADER)
        if header is None:
            raise not_dicom()  # analysed before DICOM results existed, or not kept
        return header

    async def dicom_sr(self, study: Study) -> bytes:
        """The study's Structured Report (TID 1500) as a Part 10 file, of a study from
        `study()`; Conflict `not_dicom` for a study not analysed from a DICOM."""
        return await sr_bytes(await self._source_header(study), study)

    async def dicom_heatmaps(self, study: Study, findings: Sequence[str] = FINDINGS) -> list[bytes]:
        """The heatmap objects of `findings` (FINDINGS order), Part 10 files."""
        header = await self._source_header(study)
        pngs = {f: await self.heatmap(study, f) for f in findings}
        return await heatmap_bytes(header, study, pngs)
