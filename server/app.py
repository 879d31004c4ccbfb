"""The Litestar app factory: wires settings, the service (engine and store) and routes.

The process is live at once; it is ready (GET /health/ready) when the models are loaded
and warmed up, which happens in the background after start-up.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import HttpMethod, Litestar, Response, Router, route
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from prometheus_client import CollectorRegistry

from chexray import __version__
from server import tracing
from server.api import (
    accounts,
    admin,
    admin_audit,
    dicomweb,
    dimse,
    keys,
    legacy,
    oip_grpc,
    oip_rest,
    operations,
    pacs,
    predictions,
    studies,
    web,
)
from server.api.deps import DEPENDENCIES
from server.api.errors import EXCEPTION_HANDLERS
from server.api.middleware import HttpMetrics, TrustedProxies, request_context, security_headers
from server.api.openapi import SECURITY_SCHEMES, StrictStructSchemaPlugin
from server.api.ratelimit import Limits
from server.service import Manifest, Service
from server.settings import Settings

log = logging.getLogger("chexray")

GRPC_GRACE_S = 5.0

# The routes that take an X-ray: bodies up to the upload limit plus room for the multipart
# envelope. The Open Inference Protocol's routes (oip_rest.router) take up to
# CHEXRAY_MAX_REQUEST_BYTES. Every other route takes at most MAX_JSON_BODY bytes (a log-in, a
# profile), so a body meant to fill memory is refused with 413 before it is read.
UPLOAD_ROUTES = [
    predictions.create_prediction,
    legacy.legacy_upload,
    legacy.legacy_anonupload,
]
MAX_JSON_BODY = 64 * 1024

ROUTES = [
    accounts.register,
    accounts.login,
    accounts.logout,
    accounts.session,
    accounts.get_me,
    accounts.patch_me,
    accounts.change_password,
    accounts.delete_me,
    keys.create_key,
    keys.list_keys,
    keys.revoke_key,
    studies.list_studies,
    studies.get_study,
    studies.delete_study,
    studies.get_image,
    studies.get_heatmap,
    studies.get_finding_heatmap,
    studies.get_dicom_sr,
    studies.get_dicom_heatmap,
    studies.get_study_pacs,
    studies.send_study_to_pacs,
    pacs.pull_from_pacs,
    legacy.signup,
    legacy.legacy_login,
    legacy.legacy_user,
    legacy.legacy_xray_detail,
    legacy.legacy_media,
    operations.live,
    operations.ready,
    operations.metrics,
    operations.models,
    *admin.ROUTES,
    web.index,
    web.static,
    admin_audit.audit_records,
    admin_audit.verify_audit,
]


def options_handlers(handlers: list) -> list[HTTPRouteHandler]:
    """OPTIONS for each path that several handlers serve, naming all their methods in Allow.

    Litestar 2 answers such a path's OPTIONS with the first handler's methods only
    (litestar-org/litestar#4169, fixed in Litestar 3); registered before the others, these
    replace its own."""
    methods: dict[str, set[str]] = defaultdict(set)
    count: dict[str, int] = defaultdict(int)
    for handler in (h for h in handlers if isinstance(h, HTTPRouteHandler)):
        for path in handler.paths:
            methods[path] |= set(handler.http_methods)
            count[path] += 1

    def allow(path: str, names: str) -> HTTPRouteHandler:
        @route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False)
        async def options() -> Response[None]:
            return Response(None, status_code=204, headers={"Allow": names})

        return options

    return [
        allow(path, ", ".join(sorted(names | {"OPTIONS"})))
        for path, names in methods.items()
        if count[path] > 1
    ]


def create_app(settings: Settings | None = None, manifest: Manifest | None = None) -> Litestar:
    """`manifest`: the model repository's, when the caller has verified it already."""
    settings = settings or Settings.from_env()
    logging.getLogger("chexray").setLevel(settings.log_level.upper())
    tracing.configure(settings.tracing)
    registry = CollectorRegistry()
    http_metrics = HttpMetrics(registry)
    service = Service(settings, registry, manifest)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await service.start()
        grpc_server = None
        scp = dimse.StorageScp(service, settings) if settings.dimse_port else None
        try:
            # The Open Inference Protocol's gRPC service, in this process and event loop.
            if settings.grpc_port:
                grpc_server = await oip_grpc.start(service, settings)
            if scp is not None:
                await scp.start()
            yield
        finally:
            if scp is not None:
                scp.stop()
            if grpc_server is not None:
                # Admitted work has drained by now (server/http_server.py); a few seconds
                # for answers still being sent.
                await grpc_server.stop(GRPC_GRACE_S)
            await service.stop()

    uploads = Router(
        path="/",
        route_handlers=UPLOAD_ROUTES,
        request_max_body_size=settings.max_upload_bytes + 1024 * 1024,
    )
    trusted = TrustedProxies(settings.trusted_proxies)
    app = Litestar(
        route_handlers=[
            *options_handlers([*UPLOAD_ROUTES, *ROUTES]),
            uploads,
            *ROUTES,
            oip_rest.router(settings),
            dicomweb.router(settings),
        ],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        before_send=[security_headers],
        plugins=[StrictStructSchemaPlugin()],
        lifespan=[lifespan],
        state=State(
            {
                "settings": settings,
                "service": service,
                "registry": registry,
                "limiter": Limits(
                    settings.rate_limit, settings.account_rate_limit, counts=service.counts
                ),
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
            components=SECURITY_SCHEMES,
            # Swagger UI from this server's files at /schema and /schema/swagger; with the
            # pages off, the JSON schema alone (the rest of /schema answers 404).
            render_plugins=[web.SwaggerDocs()]
            if settings.api_docs
            else [web.NoDocs(), JsonRenderPlugin()],
        ),
        request_max_body_size=MAX_JSON_BODY,  # the upload routes' Router allows more
        debug=False,
    )
    # Around the router rather than per route (Litestar's `middleware=`), so that the
    # router's own 404s and 405s also carry a request id and are counted.
    app.asgi_handler = request_context(app.asgi_handler, http_metrics, trusted)
    return app
