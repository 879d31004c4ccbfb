"""Sliding-window attempt counting for login and register, per client and per username.

Kept in this process's memory: with several replicas each enforces the limit on its own
share of the traffic (a limit of N per replica).
"""

from __future__ import annotations

import time
from collections import deque
from threading import Lock


class RateLimiter:
    def __init__(self, attempts: int, seconds: float) -> None:
        self.attempts, self.seconds = attempts, seconds
        self._hits: dict[str, deque[float]] = {}
        self._lock = Lock()

    def hit(self, *keys: str) -> float | None:
        """Count one attempt against each key; None if allowed, else seconds to wait."""
        now = time.monotonic()
        with self._lock:
            waits = []
            for key in keys:
                hits = self._hits.setdefault(key, deque())
                while hits and hits[0] <= now - self.seconds:
                    hits.popleft()
                if len(hits) >= self.attempts:
                    waits.append(hits[0] + self.seconds - now)
            if waits:
                return max(1.0, max(waits))
            for key in keys:
                self._hits[key].append(now)
            if len(self._hits) > 100_000:  # forget idle keys rather than grow forever
                self._hits = {
                    k: v for k, v in self._hits.items() if v and v[-1] > now - self.seconds
                }
            return None
