"""The Litestar app factory: wires settings, engine, store and routes.

The process is live at once; it is ready (GET /health/ready) when the models are loaded
and warmed up, which happens in the background after start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from prometheus_client import CollectorRegistry

from chexray import __version__
from server.api import accounts, operations, predictions, seed, studies, web
from server.api.deps import DEPENDENCIES
from server.api.errors import EXCEPTION_HANDLERS
from server.api.middleware import HttpMetrics, request_context
from server.api.ratelimit import RateLimiter
from server.runtime.engine import Engine
from server.runtime.manifest import Manifest
from server.settings import Settings
from server.store.db import Database
from server.store.media import MediaStore

log = logging.getLogger("chexray")

ROUTES = [
    predictions.create_prediction,
    accounts.register,
    accounts.login,
    accounts.logout,
    accounts.session,
    accounts.get_me,
    accounts.patch_me,
    accounts.change_password,
    accounts.delete_me,
    studies.list_studies,
    studies.get_study,
    studies.delete_study,
    studies.get_image,
    studies.get_heatmap,
    studies.get_finding_heatmap,
    studies.get_media,
    seed.signup,
    seed.seed_login,
    seed.seed_user,
    seed.seed_xray_detail,
    seed.seed_upload,
    seed.seed_anonupload,
    operations.live,
    operations.ready,
    operations.metrics,
    operations.models,
    web.index,
    web.static,
]


def create_app(settings: Settings | None = None, manifest: Manifest | None = None) -> Litestar:
    """`manifest`: the model repository's, when the caller has verified it already."""
    settings = settings or Settings.from_env()
    logging.getLogger("chexray").setLevel(settings.log_level.upper())
    registry = CollectorRegistry()
    http_metrics = HttpMetrics(registry)
    db = Database(settings.db_url)
    media = MediaStore(settings.media_dir)

    async def boot_engine(app: Litestar) -> None:
        try:
            engine = await asyncio.to_thread(Engine, settings, registry, manifest)
            app.state.engine = engine
            await engine.start()
            log.info("ready: model %s on %s", engine.manifest.version, engine.provider)
        except Exception as exc:
            app.state.engine_error = str(exc)
            log.error("the models failed to load: %s", exc)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await db.run(db.create_all)
        log.info("database %s, media in %s", db.safe_url, media.root)
        boot = asyncio.create_task(boot_engine(app))
        try:
            yield
        finally:
            boot.cancel()
            engine: Engine | None = app.state.get("engine")
            if engine is not None:
                await engine.stop()
            db.dispose()

    return Litestar(
        route_handlers=ROUTES,
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[lambda app: request_context(app, http_metrics)],
        lifespan=[lifespan],
        state=State(
            {
                "settings": settings,
                "db": db,
                "media": media,
                "registry": registry,
                "limiter": RateLimiter(*settings.rate_limit),
                "engine": None,
                "engine_error": None,
            }
        ),
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins))
        if settings.cors_origins
        else None,
        openapi_config=OpenAPIConfig(
            title="CheXray",
            version=__version__,
            description="Chest X-ray findings, probabilities and heatmaps from a five-CNN "
            "ensemble. Research use only: not a medical device.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        # Uploads up to the limit plus room for the multipart envelope.
        request_max_body_size=settings.max_upload_bytes + 1024 * 1024,
        debug=False,
    )
