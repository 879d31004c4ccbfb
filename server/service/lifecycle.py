"""Model versions on a running server, for administrators: which are installed and loaded,
switching the served one without downtime, canary and shadow rollouts and how their
candidate compares (server/runtime/state.py does the work).

Every call checks that the caller is an administrator first (Forbidden `not_admin`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from server.errors import InvalidInput
from server.runtime.repository import archived_versions, current_manifest
from server.runtime.rollout import Mode, RolloutReport
from server.runtime.state import EngineState, EngineView
from server.service.accounts import Accounts, Principal

MODES = ("canary", "shadow")


@dataclass(frozen=True)
class InstalledVersion:
    version: str
    created: str
    thresholds_source: str
    calibrated: bool
    in_repository: bool  # the repository's manifest names it (what a restart serves)
    role: str | None  # primary, canary, shadow or retiring when loaded


@dataclass(frozen=True)
class RolloutState:
    mode: Mode
    version: str
    fraction: float | None


@dataclass(frozen=True)
class ModelsState:
    primary: str
    installed: list[InstalledVersion]
    engines: list[EngineView]
    rollout: RolloutState | None
    changing: str | None  # a change under way


class Lifecycle:
    def __init__(
        self,
        engines: EngineState,
        accounts: Accounts,
        model_dir: Path,
        canary_fraction: float = 0.05,
    ) -> None:
        """`canary_fraction`: a canary's share when a rollout names none."""
        self.engines = engines
        self.accounts = accounts
        self.model_dir = model_dir
        self.canary_fraction = canary_fraction

    async def state(self, who: Principal) -> ModelsState:
        await self.accounts.require_admin(who)
        primary = self.engines.require()
        return await asyncio.to_thread(self._state, primary.version)

    def _state(self, primary: str) -> ModelsState:
        views = self.engines.views()
        roles = {v.version: v.role for v in reversed(views)}  # primary wins over retiring
        current = current_manifest(self.model_dir)
        manifests = {m.version: m for m in archived_versions(self.model_dir)}
        if current is not None:
            manifests.setdefault(current.version, current)
        installed = [
            InstalledVersion(
                m.version,
                m.created,
                m.thresholds.source,
                m.calibration is not None,
                current is not None and current.version == m.version,
                roles.get(m.version),
            )
            for m in sorted(manifests.values(), key=lambda m: m.created)
        ]
        r = self.engines.rollout
        rollout = (
            None
            if r is None
            else RolloutState(r.mode, r.engine.version, r.fraction if r.mode == "canary" else None)
        )
        return ModelsState(primary, installed, views, rollout, self.engines.changing)

    async def activate(self, who: Principal, version: str) -> bool:
        """Serve `version` from now on (see EngineState.activate); False when it already was."""
        await self.accounts.require_admin(who)
        return await self.engines.activate(version)

    async def start_rollout(
        self, who: Principal, mode: str, version: str, fraction: float | None
    ) -> None:
        await self.accounts.require_admin(who)
        if mode not in MODES:
            raise InvalidInput(
                "invalid_mode", f"mode must be canary or shadow, not {mode!r}", {"field": "mode"}
            )
        if mode == "canary" and fraction is None:
            fraction = self.canary_fraction
        if mode == "canary" and not 0.0 <= fraction <= 1.0:
            raise InvalidInput(
                "invalid_fraction",
                "a canary needs a fraction between 0 and 1: the share of analyses it answers",
                {"field": "fraction"},
            )
        if not version:
            raise InvalidInput("invalid_version", "name the version", {"field": "version"})
        await self.engines.start_rollout(mode, version, fraction or 0.0)  # type: ignore[arg-type]

    async def end_rollout(self, who: Principal) -> str:
        await self.accounts.require_admin(who)
        return await self.engines.end_rollout()

    async def promote(self, who: Principal) -> str:
        await self.accounts.require_admin(who)
        return await self.engines.promote()

    async def report(self, who: Principal) -> RolloutReport:
        await self.accounts.require_admin(who)
        return self.engines.report()
