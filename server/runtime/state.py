"""The engine's life in one object: loading, ready, or failed with its error.

Boot sets it, readiness reports it, and every caller that needs the engine asks it for one
(`require`), which answers with a coded Unavailable while there is none to give.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from server.errors import Unavailable
from server.runtime.engine import Engine

log = logging.getLogger("chexray.runtime")

Status = Literal["loading", "ready", "failed", "stopped"]


class EngineState:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.error: str | None = None
        self._stopped = False
        self._draining = False

    @property
    def status(self) -> Status:
        if self.error is not None:
            return "failed"
        if self._stopped:
            return "stopped"
        return "ready" if self.engine is not None and self.engine.ready else "loading"

    async def boot(self, build: Callable[[], Engine]) -> None:
        """Build the engine in a thread (loading sessions takes seconds), warm it up, and
        record the outcome; never raises, so a failed load leaves a server that says why."""
        try:
            self.engine = await asyncio.to_thread(build)
            await self.engine.start()
            if self._draining:
                self.engine.admission.draining = True
            log.info("ready: model %s on %s", self.engine.manifest.version, self.engine.provider)
        except Exception as exc:
            self.error = str(exc)
            log.error("the models failed to load: %s", exc)

    async def stop(self) -> None:
        self._stopped = True
        if self.engine is not None:
            await self.engine.stop()

    def require(self) -> Engine:
        """The engine, ready to predict; Unavailable (coded) while it is not."""
        if self.error is not None:
            raise Unavailable("models_unavailable", f"the models failed to load: {self.error}")
        if self.engine is None or not self.engine.ready:
            raise Unavailable(
                "not_ready", "the models are still loading; retry shortly", retry_after=5
            )
        problem = self.engine.problem()
        if problem is not None:
            raise Unavailable("engine_failed", f"the inference engine cannot serve: {problem}")
        return self.engine

    def drain(self) -> None:
        """Admit no new analyses (SIGTERM); those admitted carry on."""
        self._draining = True
        if self.engine is not None:
            self.engine.admission.draining = True

    @property
    def in_flight(self) -> int:
        """Analyses admitted and not yet answered."""
        return self.engine.admission.in_flight if self.engine is not None else 0

    @property
    def reason(self) -> str | None:
        """Why the engine cannot take work, when it cannot (for readiness)."""
        if self.error is not None:
            return f"the models failed to load: {self.error}"
        if self.engine is not None and self.engine.ready and self.engine.problem():
            return f"the inference engine cannot serve: {self.engine.problem()}"
        if self._draining:
            return "shutting down: no new analyses are taken"
        return None

    def checks(self) -> dict[str, bool]:
        ready = self.engine is not None and self.engine.ready
        return {
            "models_loaded": self.engine is not None,
            "warmed_up": ready,
            "engine_healthy": ready and self.engine.problem() is None,
            "accepting": not self._draining,
        }
