"""Dependencies the handlers name as parameters: the service, settings, limiter, caller."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from server.api.auth import provide_auth, provide_principal
from server.api.ratelimit import Limits
from server.service import Principal, Service
from server.settings import Settings


def provide_service(state: State) -> Service:
    return state.service


def provide_settings(state: State) -> Settings:
    return state.settings


def provide_limiter(state: State) -> Limits:
    return state.limiter


DEPENDENCIES = {
    "service": Provide(provide_service, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "limiter": Provide(provide_limiter, sync_to_thread=False),
    "principal": Provide(provide_principal),
    "auth": Provide(provide_auth),
}

# Handler parameters name their dependency explicitly with these.
ServiceDep = NamedDependency[Service]
SettingsDep = NamedDependency[Settings]
LimiterDep = NamedDependency[Limits]
PrincipalDep = NamedDependency[Principal | None]
AuthDep = NamedDependency[Principal]
