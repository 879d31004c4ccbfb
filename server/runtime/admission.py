"""Admission by deadline: an analysis is let in only when its expected wait fits a budget.

Checked before a request's body is read, so refusing costs next to nothing and an overloaded
server keeps its throughput for the work it accepted. An analysis counts from admission
(body upload, decode, queue, batch) until its answer is ready. Its expected wait is the
number of analyses ahead of it, in batches of `max_batch` per instance, times how long such
a batch takes lately (measured per batch size by the batcher, first at warm-up). Past
`budget_s`, or past `max_in_flight` analyses, the caller gets Overloaded (503) with a
Retry-After of when the queue should have drained enough. A draining server (SIGTERM)
admits nothing new while what it admitted finishes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from server.errors import Unavailable


class Overloaded(Unavailable):
    """No room for more work now: try again after `retry_after` s."""

    def __init__(self, reason: str, retry_after: float, code: str = "overloaded") -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(code, f"{reason}; retry in {seconds} s", None, seconds)


class Admission:
    def __init__(
        self,
        *,
        budget_s: float,
        max_in_flight: int,
        batch_capacity: int,
        batch_seconds: Callable[[int], float],
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """`batch_capacity`: images the engine runs at once (max_batch x instances);
        `batch_seconds(n)`: how long a batch of n takes lately."""
        self.budget_s, self.max_in_flight = budget_s, max_in_flight
        self.capacity = batch_capacity
        self._batch_seconds = batch_seconds
        self._on_refused = on_refused
        self.in_flight = 0
        self.draining = False

    def expected_wait(self, ahead: int | None = None) -> float:
        """Seconds until a newcomer's batch could start, with `ahead` analyses before it."""
        ahead = self.in_flight if ahead is None else ahead
        if ahead <= 0:
            return 0.0
        full, rest = divmod(ahead, self.capacity)
        wait = full * self._batch_seconds(self.capacity)
        if rest:
            wait += self._batch_seconds(rest)
        return wait

    def _refuse(self, reason: str, retry_after: float, code: str = "overloaded") -> Overloaded:
        if self._on_refused is not None:
            self._on_refused(code)
        return Overloaded(reason, retry_after, code)

    def check(self) -> None:
        """Raise Overloaded unless one more analysis may start now."""
        if self.draining:
            raise self._refuse(
                "the server is shutting down and takes no new work", 5, "shutting_down"
            )
        if self.in_flight >= self.max_in_flight:
            raise self._refuse(
                f"{self.in_flight} analyses are in progress, the most this server takes",
                self.expected_wait() - self.budget_s + self._batch_seconds(self.capacity),
            )
        wait = self.expected_wait()
        if wait > self.budget_s:
            raise self._refuse(
                f"the expected wait ({wait:.1f} s) is over this server's budget "
                f"({self.budget_s:.1f} s)",
                wait - self.budget_s + self._batch_seconds(self.capacity),
            )

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place for one analysis (check, then count it) until the block ends."""
        self.check()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
