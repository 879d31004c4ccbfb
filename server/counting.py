"""Sliding-window counts: at most N events per S seconds per key, for the sign-in limits
(server/api/ratelimit.py) and the anonymous studies' per-address quota.

Two implementations of one interface (`Counts`): `MemoryCounts`, in this process (one
server on a SQLite file), and `server.store.counts.DatabaseCounts`, in the database, so
that replicas sharing a PostgreSQL database share the counts too. A caller opens a
`scope` naming every (window, key) it will touch; inside it, checks and changes are atomic
with respect to every other scope on those keys, in this process or another. Callers check
everything before they change anything, so a refused try stores nothing in either.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from threading import Lock
from typing import Protocol

MAX_KEYS = 20_000  # per window; about 0.45 KB a key at N=10, so 30 MB with every window full

Key = Hashable


@dataclass(frozen=True)
class Window:
    """At most `attempts` events per `seconds`, per key; `name` tells windows apart."""

    name: str
    attempts: int
    seconds: float


class Tally(Protocol):
    """The counts of the keys a scope named, while it is open."""

    def wait(self, window: Window, key: Key) -> float | None:
        """Seconds until `key` may have another event; None if it may now."""

    def seen(self, window: Window, key: Key) -> bool:
        """Whether `key` had an event within the window."""

    def add(self, window: Window, key: Key) -> float:
        """Count one event (whether or not allowed: check `wait` first); its time, for
        `remove`."""

    def remove(self, window: Window, key: Key, when: float) -> None:
        """Take back the event counted at `when`, if still held."""

    def clear(self, window: Window, key: Key) -> None:
        """Forget every event of `key`."""


class Counts(Protocol):
    def scope(self, keys: Iterable[tuple[Window, Key]]) -> AbstractContextManager[Tally]:
        """The counts of these keys, held for this scope alone. Blocking (the database one
        does I/O): call it from a worker thread, not the event loop."""

    def size(self, window: Window) -> int:
        """Keys held for `window` (for tests and metrics)."""


class SlidingWindow:
    """At most `attempts` events per `seconds` per key. Keys are kept in the order of their
    last event, so idle ones are dropped from the front; a key keeps only its last
    `attempts` times, all that the decision needs. Not thread-safe (see MemoryCounts)."""

    def __init__(
        self,
        attempts: int,
        seconds: float,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts, self.seconds, self.max_keys, self.clock = attempts, seconds, max_keys, clock
        self._events: OrderedDict[Hashable, array] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def _prune(self, now: float) -> None:
        events = self._events
        while events:
            times = next(iter(events.values()))
            if times and times[-1] > now - self.seconds and len(events) <= self.max_keys:
                break
            events.popitem(last=False)

    def wait(self, key: Hashable) -> float | None:
        """Seconds until `key` may have another event; None if it may now."""
        now = self.clock()
        self._prune(now)
        times = self._events.get(key)
        if times is None or len(times) < self.attempts:
            return None
        oldest = times[-self.attempts]
        return oldest + self.seconds - now if oldest > now - self.seconds else None

    def seen(self, key: Hashable) -> bool:
        """Whether `key` had an event within the window."""
        now = self.clock()
        self._prune(now)
        times = self._events.get(key)
        return bool(times) and times[-1] > now - self.seconds

    def add(self, key: Hashable) -> float:
        """Count one event (whether or not allowed: check `wait` first); returns its time,
        for `remove`."""
        now = self.clock()
        times = self._events.pop(key, None)
        if times is None:
            times = array("d")
        times.append(now)
        if len(times) > self.attempts:
            del times[0]
        self._events[key] = times
        self._prune(now)
        return now

    def remove(self, key: Hashable, when: float) -> None:
        """Take back the event counted at `when`, if still held."""
        times = self._events.get(key)
        if times is not None and when in times:
            times.remove(when)
            if not times:
                del self._events[key]

    def clear(self, key: Hashable) -> None:
        self._events.pop(key, None)


class _MemoryTally:
    def __init__(self, counts: MemoryCounts) -> None:
        self._counts = counts

    def wait(self, window: Window, key: Key) -> float | None:
        return self._counts.window(window).wait(key)

    def seen(self, window: Window, key: Key) -> bool:
        return self._counts.window(window).seen(key)

    def add(self, window: Window, key: Key) -> float:
        return self._counts.window(window).add(key)

    def remove(self, window: Window, key: Key, when: float) -> None:
        self._counts.window(window).remove(key, when)

    def clear(self, window: Window, key: Key) -> None:
        self._counts.window(window).clear(key)


class MemoryCounts:
    """Counts in this process's memory: one lock, a SlidingWindow per window, each holding
    at most `max_keys` keys (the least recently counted go first). Changes are made as they
    come: a scope's caller checks everything before it adds anything (ratelimit.Limits), so
    a refused try stores nothing."""

    def __init__(self, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic):
        self.max_keys, self.clock = max_keys, clock
        self._windows: dict[str, SlidingWindow] = {}
        self._lock = Lock()
        self._tally = _MemoryTally(self)

    def window(self, window: Window) -> SlidingWindow:
        found = self._windows.get(window.name)
        if found is None:
            found = SlidingWindow(window.attempts, window.seconds, self.max_keys, self.clock)
            self._windows[window.name] = found
        return found

    @contextmanager
    def scope(self, keys: Iterable[tuple[Window, Key]]) -> Iterator[Tally]:
        with self._lock:
            yield self._tally

    def size(self, window: Window) -> int:
        with self._lock:
            return len(self.window(window))
