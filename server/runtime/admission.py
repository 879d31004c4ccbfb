"""Admission by deadline: an analysis is let in only when its expected wait fits a budget.

Checked before a request's body is read, so refusing costs next to nothing and an overloaded
server keeps its throughput for the work it accepted. An analysis counts from admission
(body upload, decode, queue, batch) until its answer is ready. Its expected wait is that
of the analyses ahead of it and its own, in batches of `max_batch` per instance, times how
long such a batch takes lately (measured per batch size by the batcher, first at warm-up):
so what an admitted analysis waits, its own batch included, fits the budget. Past
`budget_s`, or past `max_in_flight` analyses, the caller gets Overloaded (503) with a
Retry-After of when the analyses in flight should be done. A draining server (SIGTERM)
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

    def drain_time(self) -> float:
        """Seconds until the analyses now in flight are done: a refused caller's Retry-After.
        Sooner, the queue it left would still be there (on an overloaded server the
        refused would only come back to be refused again, each time costing an upload)."""
        return self.expected_wait(self.in_flight)

    def _refuse(self, reason: str, retry_after: float, code: str = "overloaded") -> Overloaded:
        if self._on_refused is not None:
            self._on_refused(code)
        return Overloaded(reason, retry_after, code)

    def check(self, count: int = 1) -> None:
        """Raise Overloaded unless `count` more analyses may start now: their expected wait,
        the batches of everything in flight and then theirs, must fit the budget (an idle
        server admits any count)."""
        if self.draining:
            raise self._refuse(
                "the server is shutting down and takes no new work", 5, "shutting_down"
            )
        ahead = self.in_flight + count - 1
        if ahead >= self.max_in_flight:
            reason = f"{self.in_flight} analyses are in progress, the most this server takes"
            if count > 1:
                reason = (
                    f"{self.in_flight} analyses are in progress and this request adds {count}: "
                    f"over the {self.max_in_flight} this server takes at once"
                )
            raise self._refuse(reason, self.drain_time())
        if self.in_flight == 0:
            return  # an idle server takes any request: refusing could not make it sooner
        # Until its own batch is done, not only until it starts: what it waits for in all
        # (beyond its decode) then fits the budget, however its batches fall.
        wait = self.expected_wait(self.in_flight + count)
        if wait > self.budget_s:
            raise self._refuse(
                f"the expected wait ({wait:.1f} s) is over this server's budget "
                f"({self.budget_s:.1f} s)",
                self.drain_time(),
            )

    @contextmanager
    def admit(self, count: int = 1) -> Iterator[None]:
        """Hold places for `count` analyses (check, then count them) until the block ends;
        a request of several images is admitted whole or not at all."""
        if count < 1:
            raise ValueError(f"admit() needs a count of at least 1, not {count}")
        self.check(count)
        self.in_flight += count
        try:
            yield
        finally:
            self.in_flight -= count
