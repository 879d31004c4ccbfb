"""Sliding-window counts in the database (table rate_counts), shared by every replica that
shares it: the `Counts` of server/counting.py for the sign-in limits and the anonymous
quota when several servers run on one PostgreSQL database.

A scope is one transaction. On PostgreSQL it first takes a transaction-level advisory lock
per key, in one global order (so two scopes never deadlock), reads those keys' rows, lets
the caller decide and count, and writes back what changed; a refused try changes nothing
and the transaction ends without a write. SQLite serves one process: a lock in the process
stands in for the advisory locks.

Costs: a scope is four to six small statements (lock, read, a write per changed key,
commit); a sign-in is two scopes (its start, its end). The table holds one row per key
with events in its window: every `cleanup_every_s` each replica deletes the rows whose
events have all expired and, past `max_keys` keys in a window, the least recently counted,
as the memory counts do, skipping rows a scope holds (so the cleanup never waits on a
sign-in, nor a sign-in on it).

Times are the replicas' wall clocks (seconds since the epoch): keep them synchronised
(NTP); a skew of a few seconds only moves a 60-second window by as much.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from sqlalchemy import Connection, delete, func, insert, select, text, update

from server.counting import MAX_KEYS, Key, Tally, Window
from server.store.db import Database, database_errors, outage_log
from server.store.models import RateCount

log = logging.getLogger("chexray.store")

TABLE = RateCount.__table__
CLEANUP_EVERY_S = 10.0
CLEANUP_BATCH = 1000
CLEANUP_ROUNDS = 20  # at most this many batches per cleanup; the next one goes on


def _digest(window: Window, key: Key) -> str:
    return hashlib.sha256(f"{window.name}\0{key!r}".encode()).hexdigest()


def _lock_id(digest: str) -> int:
    """A signed 64-bit advisory lock id from a key's digest."""
    return int.from_bytes(bytes.fromhex(digest[:16]), "big", signed=True)


class _Row:
    __slots__ = ("changed", "loaded", "times", "window")

    def __init__(self, window: Window, times: list[float] | None) -> None:
        self.window = window
        self.loaded = times is not None
        self.times = sorted(times or [])
        self.changed = False


class _DatabaseTally:
    """The rows of one scope, decided on in memory and written back at its end."""

    def __init__(self, rows: dict[str, _Row], keys: dict[tuple[str, Key], str], now: float):
        self._rows, self._keys, self.now = rows, keys, now

    def _row(self, window: Window, key: Key) -> _Row:
        try:
            row = self._rows[self._keys[(window.name, key)]]
        except KeyError:
            raise KeyError(f"{window.name} {key!r} was not named by the scope") from None
        # Only the events inside the window, at most the last `attempts`: all a decision
        # needs (times from another replica's rows may be older than its window says).
        start = bisect.bisect_right(row.times, self.now - window.seconds)
        row.times = row.times[max(start, len(row.times) - window.attempts) :]
        return row

    def wait(self, window: Window, key: Key) -> float | None:
        times = self._row(window, key).times
        if len(times) < window.attempts:
            return None
        return times[-window.attempts] + window.seconds - self.now

    def seen(self, window: Window, key: Key) -> bool:
        return bool(self._row(window, key).times)

    def add(self, window: Window, key: Key) -> float:
        row = self._row(window, key)
        bisect.insort(row.times, self.now)
        del row.times[: max(0, len(row.times) - window.attempts)]
        row.changed = True
        return self.now

    def remove(self, window: Window, key: Key, when: float) -> None:
        row = self._row(window, key)
        if when in row.times:
            row.times.remove(when)
            row.changed = True

    def clear(self, window: Window, key: Key) -> None:
        row = self._row(window, key)
        row.changed = row.changed or bool(row.times) or row.loaded
        row.times = []


class DatabaseCounts:
    def __init__(
        self,
        db: Database,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.time,
        cleanup_every_s: float = CLEANUP_EVERY_S,
    ) -> None:
        self.db, self.max_keys, self.clock = db, max_keys, clock
        self.cleanup_every_s = cleanup_every_s
        self._advisory = db.engine.dialect.name == "postgresql"
        # Without advisory locks (SQLite: one process), scopes take turns here.
        self._local = contextlib.nullcontext() if self._advisory else threading.Lock()
        self._windows: dict[str, Window] = {}
        self._cleanup_lock = threading.Lock()
        self._last_cleanup = float("-inf")

    @contextlib.contextmanager
    def scope(self, keys: Iterable[tuple[Window, Key]]) -> Iterator[Tally]:
        named = {(w.name, k): (w, _digest(w, k)) for w, k in keys}
        digests = {d: w for w, d in named.values()}
        for window in digests.values():
            self._windows.setdefault(window.name, window)
        with self._local, database_errors(), self.db.engine.begin() as conn:
            if self._advisory:
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(x) FROM unnest(CAST(:ids AS bigint[])) x"),
                    {"ids": sorted({_lock_id(d) for d in digests})},
                )
            found = dict(
                conn.execute(
                    select(TABLE.c.key, TABLE.c.times).where(TABLE.c.key.in_(list(digests)))
                ).all()
            )
            rows = {d: _Row(w, found.get(d)) for d, w in digests.items()}
            tally = _DatabaseTally(rows, {n: d for n, (_, d) in named.items()}, self.clock())
            yield tally
            self._write(conn, rows, tally.now)
        self._maybe_clean_up()

    def _write(self, conn: Connection, rows: dict[str, _Row], now: float) -> None:
        for digest, row in rows.items():
            if not row.changed:
                continue
            times = [t for t in row.times if t > now - row.window.seconds]
            if not times:
                if row.loaded:
                    conn.execute(delete(TABLE).where(TABLE.c.key == digest))
                continue
            values = {
                "window": row.window.name,
                "times": times,
                "expires_at": times[-1] + row.window.seconds,
            }
            # The advisory lock keeps other scopes away from this key; only the cleanup may
            # have deleted the row since it was read (its events had expired): insert it.
            if (
                row.loaded
                and conn.execute(update(TABLE).where(TABLE.c.key == digest).values(values)).rowcount
            ):
                continue
            conn.execute(insert(TABLE).values(key=digest, **values))

    def size(self, window: Window) -> int:
        with database_errors(), self.db.engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(TABLE).where(TABLE.c.window == window.name)
            ).scalar_one()

    # -- keeping the table bounded ---------------------------------------------------------

    def _maybe_clean_up(self) -> None:
        now = self.clock()
        with self._cleanup_lock:
            if now - self._last_cleanup < self.cleanup_every_s:
                return
            self._last_cleanup = now
        try:
            self.clean_up(now)
        except Exception as exc:  # the counting itself went well; the next cleanup goes on
            outage_log.warning("rate counts: cleanup failed: %s", exc)

    def clean_up(self, now: float | None = None) -> int:
        """Delete expired rows and, past `max_keys` in a window, the least recently counted
        ones; the number of rows deleted."""
        now = self.clock() if now is None else now
        deleted = 0
        for _ in range(CLEANUP_ROUNDS):
            expired = (
                select(TABLE.c.key)
                .where(TABLE.c.expires_at <= now)
                .limit(CLEANUP_BATCH)
                .with_for_update(skip_locked=True)
            )
            with self.db.engine.begin() as conn:
                n = conn.execute(delete(TABLE).where(TABLE.c.key.in_(expired))).rowcount
            deleted += n
            if n < CLEANUP_BATCH:
                break
        for name in list(self._windows):
            with self.db.engine.begin() as conn:
                held = conn.execute(
                    select(func.count()).select_from(TABLE).where(TABLE.c.window == name)
                ).scalar_one()
                if held <= self.max_keys:
                    continue
                excess = (
                    select(TABLE.c.key)
                    .where(TABLE.c.window == name)
                    .order_by(TABLE.c.expires_at.desc())
                    .offset(self.max_keys)
                    .with_for_update(skip_locked=True)
                )
                deleted += conn.execute(delete(TABLE).where(TABLE.c.key.in_(excess))).rowcount
        return deleted
