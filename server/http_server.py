"""The HTTP server process: uvicorn, with a drain before it stops."""

from __future__ import annotations

import logging
import time

import uvicorn

from server.service import Service

log = logging.getLogger("chexray")


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before its shutdown: the first SIGTERM (or Ctrl-C) makes the
    service refuse new analyses (503, readiness fails, so a load balancer moves on) while the
    ones it admitted finish, for at most `drain_timeout_s`; then uvicorn closes as usual.
    A second Ctrl-C still quits at once."""

    def __init__(self, config: uvicorn.Config, service: Service, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.service, self.drain_timeout_s = service, drain_timeout_s
        self._drain_since: float | None = None

    async def on_tick(self, counter: int) -> bool:
        stop = await super().on_tick(counter)
        if stop and self.should_exit and not self.force_exit:
            return not self._draining()
        return stop

    def _draining(self) -> bool:
        engines = self.service.engines
        if self._drain_since is None:
            self._drain_since = time.monotonic()
            engines.drain()
            log.info("shutting down: finishing %d analyses, taking no new ones", engines.in_flight)
        if engines.in_flight == 0:
            return False
        if time.monotonic() - self._drain_since > self.drain_timeout_s:
            log.warning("drain timeout: stopping with %d analyses unfinished", engines.in_flight)
            return False
        return True
