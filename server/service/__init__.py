"""The prediction service, below every protocol: front ends (REST and the Open Inference
Protocol, DICOMweb) translate their requests into these calls and the answers back.

    Service.predictions  analyse bytes -> Analysis; stored studies, images, heatmaps, and
                         their DICOM results (Structured Report, heatmap objects)
    Service.intake       DICOM instances -> one stored analysis each (DICOMweb STOW-RS)
    Service.pacs         results to the PACS (queued, retried) and studies from it
    Service.inference    named tensors -> the engine -> named arrays (Open Inference Protocol)
    Service.accounts     register, sign in, tokens and API keys -> Principal, profile,
                         password
    Service.engines      the engines' state: loading, ready, failed (for readiness); the
                         version served and a canary or shadow candidate beside it
    Service.lifecycle    model versions for administrators: switch without downtime,
                         canary and shadow rollouts and their agreement report
    Service.audit        the audit log: one record per analysis on every protocol
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from server.cam.renderer import Renderer
from server.counting import Counts, MemoryCounts
from server.errors import ChexrayError
from server.runtime.backends import expects_gpu, graph_for
from server.runtime.engine import Engine
from server.runtime.findings import FINDINGS, finding_for, present, slug
from server.runtime.manifest import Calibration, Manifest, PrecisionCheck
from server.runtime.state import EngineState
from server.runtime.threads import side_threads
from server.service.accounts import Accounts, Principal
from server.service.audit import AuditContext, AuditLog
from server.service.dicom_intake import InstanceOutcome
from server.service.inference import Inference
from server.service.lifecycle import Lifecycle
from server.service.pacs import PacsLink, Transfer
from server.service.predictions import AnalyseOptions, Analysis, Predictions, heatmap_file
from server.service.results import ImageMeta, Result
from server.settings import Settings
from server.store.counts import DatabaseCounts
from server.store.models import ApiKey, User
from server.store.store import Store

__all__ = [
    "FINDINGS",
    "AnalyseOptions",
    "Analysis",
    "ApiKey",
    "AuditContext",
    "Calibration",
    "ImageMeta",
    "InstanceOutcome",
    "Manifest",
    "PrecisionCheck",
    "Principal",
    "Result",
    "Service",
    "Serving",
    "Transfer",
    "User",
    "finding_for",
    "heatmap_file",
    "present",
    "slug",
]

log = logging.getLogger("chexray")


class Service:
    def __init__(
        self, settings: Settings, registry: CollectorRegistry, manifest: Manifest | None = None
    ) -> None:
        """`manifest`: the model repository's, when the caller has verified it already."""
        self.settings = settings
        self.registry = registry
        self.store = Store(
            settings.db_url,
            settings.media_dir,
            anonymous_ttl=dt.timedelta(hours=settings.anonymous_ttl_hours),
            orphan_grace=dt.timedelta(minutes=settings.orphan_grace_minutes),
            media=settings.media_store,
        )
        # The sign-in limits' and the anonymous quota's counts (server/counting.py).
        self.counts: Counts = (
            DatabaseCounts(self.store.db) if settings.shared_limits else MemoryCounts()
        )
        self.engines = EngineState(
            settings.model_dir, lambda manifest: Engine(settings, registry, manifest)
        )
        self.audit = AuditLog(self.store, settings.audit_log, settings.audit_retention_days)
        self.renderer = Renderer(
            settings.heatmap_alpha,
            side_threads(settings.decode_threads, expects_gpu(settings)),
            self._observe_render,
            settings.side_work_nice,
        )
        self.predictions = Predictions(
            self.engines,
            self.store,
            self.renderer,
            settings.anonymous_max_studies,
            settings.anonymous_hourly_per_address,
            self.counts,
            on_dicom_stored=self._dicom_stored,
            audit=self.audit,
        )
        self.pacs = PacsLink(settings, self.store, self.predictions)
        self.intake = self.pacs.intake
        self.accounts = Accounts(
            self.store, settings.token_lifetime_hours, settings.api_keys_per_user, settings.admins
        )
        self.inference = Inference(
            self.engines, self.readiness, settings.max_queue, audit=self.audit
        )
        self.lifecycle = Lifecycle(
            self.engines, self.accounts, settings.model_dir, settings.canary_fraction
        )
        self._manifest = manifest
        self._boot: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        """Open the store; load the models and sweep the store in the background
        (readiness tells when the models are ready)."""
        await self.store.open()
        where = "in the database" if self.settings.shared_limits else "in this process"
        log.info("%s; sign-in limits counted %s", self.store.description, where)
        self._boot = asyncio.create_task(self._boot_engines())
        self._sweeper = asyncio.create_task(self._sweep_forever())
        self.pacs.start()

    async def _boot_engines(self) -> None:
        """The served version, then the rollout the settings ask for, if any (a refused
        one is logged: the served version serves regardless)."""
        await self.engines.boot(lambda: Engine(self.settings, self.registry, self._manifest))
        s = self.settings
        mode, version = (
            ("shadow", s.shadow_version) if s.shadow_version else ("canary", s.canary_version)
        )
        if version and self.engines.status == "ready":
            try:
                await self.engines.start_rollout(mode, version, s.canary_fraction)
            except ChexrayError as exc:
                log.error("the %s of %s did not start: %s", mode, version, exc.message)

    async def _dicom_stored(self, study_id: str) -> None:
        await self.pacs.queue(study_id)

    async def _sweep_forever(self) -> None:
        """The full sweep at start-up (repeated until it succeeds), then the periodic one."""
        full = True
        while True:
            try:
                report = await self.store.sweep(full)
                if report:
                    log.info("store sweep%s: %s", " at start-up" if full else "", report)
                full = False
            except Exception:
                log.exception("store sweep failed; retrying at the next interval")
            try:
                if deleted := await self.audit.sweep():
                    log.info("audit log: %d record(s) past retention deleted", deleted)
            except Exception:
                log.exception("audit log retention failed; retrying at the next interval")
            await asyncio.sleep(self.settings.sweep_interval_minutes * 60)

    async def stop(self) -> None:
        for task in (self._boot, self._sweeper):
            if task is not None:
                task.cancel()
        await self.pacs.stop()
        await self.engines.stop()
        await self.audit.close()
        self.renderer.close()
        self.store.close()

    def _observe_render(self, seconds: float) -> None:
        if self.engines.engine is not None:
            self.engines.engine.metrics.render.observe(seconds)

    async def readiness(self) -> tuple[dict[str, bool], str | None]:
        """Each check and whether it passed, and why the engine cannot serve, if so."""
        return {**self.engines.checks(), "database": await self.store.ping()}, self.engines.reason

    def serving(self) -> Serving:
        """What is being served, and by what."""
        e = self.engines.require()
        graph = graph_for(e.manifest, e.choice)
        return Serving(
            e.manifest,
            e.provider,
            e.choice.backend,
            e.choice.precision,
            graph.file,
            e.precision_check,
        )


@dataclass(frozen=True)
class Serving:
    manifest: Manifest
    provider: str
    backend: str
    precision: str
    graph_file: str
    precision_check: PrecisionCheck | None
