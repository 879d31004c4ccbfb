"""Dependencies the handlers name as parameters: the engine, store, settings, limiter."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from server.api.auth import Principal, provide_auth, provide_principal
from server.api.errors import ApiError
from server.api.ratelimit import RateLimiter
from server.runtime.engine import Engine
from server.settings import Settings
from server.store.db import Database
from server.store.media import MediaStore


def provide_engine(state: State) -> Engine:
    engine: Engine | None = state.get("engine")
    if engine is None or not engine.ready:
        error = state.get("engine_error")
        if error:
            raise ApiError(503, "models_unavailable", f"the models failed to load: {error}")
        raise ApiError(
            503,
            "not_ready",
            "the models are still loading; retry shortly",
            headers={"Retry-After": "5"},
        )
    return engine


def provide_db(state: State) -> Database:
    return state.db


def provide_media(state: State) -> MediaStore:
    return state.media


def provide_settings(state: State) -> Settings:
    return state.settings


def provide_limiter(state: State) -> RateLimiter:
    return state.limiter


DEPENDENCIES = {
    "engine": Provide(provide_engine, sync_to_thread=False),
    "db": Provide(provide_db, sync_to_thread=False),
    "media": Provide(provide_media, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "limiter": Provide(provide_limiter, sync_to_thread=False),
    "principal": Provide(provide_principal),
    "auth": Provide(provide_auth),
}

# Handler parameters name their dependency explicitly with these.
EngineDep = NamedDependency[Engine]
DbDep = NamedDependency[Database]
MediaDep = NamedDependency[MediaStore]
SettingsDep = NamedDependency[Settings]
LimiterDep = NamedDependency[RateLimiter]
PrincipalDep = NamedDependency[Principal | None]
AuthDep = NamedDependency[Principal]
