"""Limits on sign-ins, registrations and password changes, counted where every replica
sees them.

Counted, each N per S seconds (CHEXRAY_AUTH_RATE_LIMIT) unless said otherwise:

- every log-in and register attempt, per client address (password changes apart);
- every failed log-in (wrong password, unknown user), per username and client address, so
  that strangers' failures never lock the owner's own address out; a success clears it;
- failed log-ins of a username from addresses it has not signed in from lately (familiar:
  a success or the registration there in the last FAMILIAR_SECONDS), all of them together
  (CHEXRAY_AUTH_ACCOUNT_RATE_LIMIT): a botnet's guesses at one account are bounded, while
  the owner's familiar addresses are not held by them;
- every password change per client address, and failed ones (a wrong current password)
  per account, each try costing an argon2 hash.

A try's failure is counted when it starts and refunded unless it fails, so concurrent tries
cannot overrun a limit. A refused try counts nothing and stores nothing, and each window
holds at most `max_keys` keys (the least recently counted go first), so memory (or the
table) stays bounded whatever the traffic.

Where the counts live is the `Counts` given (server/counting.py): this process's memory
(one server), or the database (server/store/counts.py: replicas sharing a PostgreSQL
database share the counts, CHEXRAY_LIMITS_STORE). Both block: call the methods from a
worker thread, not the event loop (server/api/accounts.py does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from threading import Lock

from server.counting import MAX_KEYS, Counts, Key, MemoryCounts, SlidingWindow, Tally, Window
from server.errors import ChexrayError

__all__ = ["FAMILIAR_SECONDS", "MAX_KEYS", "Attempt", "Limited", "Limits", "SlidingWindow"]

FAMILIAR_SECONDS = 30 * 24 * 3600.0

log = logging.getLogger("chexray")


class Limited(Exception):
    """Refused: try again in `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:.0f} s")
        self.retry_after = retry_after


class Attempt:
    """One counted try in flight: say how it ended, exactly once. Each ending is a function
    of the counts of the keys the try touched, run in a scope of its own."""

    def __init__(
        self,
        run: Callable[[Callable[[Tally], None]], None],
        on_failure: Callable[[Tally], None] = lambda _: None,
        on_success: Callable[[Tally], None] = lambda _: None,
        on_other: Callable[[Tally], None] = lambda _: None,
    ) -> None:
        self._run = run
        self._ends = {"failed": on_failure, "succeeded": on_success, "other": on_other}
        self._ended = False
        self._lock = Lock()

    def _end(self, how: str) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        try:
            self._run(self._ends[how])
        except ChexrayError as exc:
            # The failure counted at the start stands: if the end cannot be recorded (the
            # database is away), the try counts as failed, the safe side; the caller's own
            # answer is not changed by it.
            log.warning("sign-in limits: could not record how a try ended (%s): %s", how, exc)

    def failed(self) -> None:
        """Wrong credentials: the failure counted at the start stands."""
        self._end("failed")

    def succeeded(self) -> None:
        self._end("succeeded")

    def ended_otherwise(self) -> None:
        """Refused for another reason (a bad request, an error): nothing was guessed."""
        self._end("other")


class Limits:
    """The server's limits (module docstring); `client` is the key of a client address."""

    def __init__(
        self,
        rate: tuple[int, float],
        account_rate: tuple[int, float],
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
        counts: Counts | None = None,
    ) -> None:
        """`counts`: where to count (default: this process's memory, with `max_keys` and
        `clock`; a given one has its own)."""
        self.counts = counts if counts is not None else MemoryCounts(max_keys, clock)
        self.attempts = Window("attempts", *rate)  # per client address
        self.failures = Window("failures", *rate)  # per (username, address); per account
        self.accounts = Window("accounts", *account_rate)  # per username, unfamiliar addresses
        self.familiar = Window("familiar", 1, FAMILIAR_SECONDS)  # (username, address) lately

    def sizes(self) -> dict[str, int]:
        """Keys held per window."""
        windows = (self.attempts, self.failures, self.accounts, self.familiar)
        return {w.name: self.counts.size(w) for w in windows}

    def _runner(self, keys: list[tuple[Window, Key]]) -> Callable[[Callable[[Tally], None]], None]:
        def run(end: Callable[[Tally], None]) -> None:
            with self.counts.scope(keys) as tally:
                end(tally)

        return run

    @staticmethod
    def _refuse(*waits: float | None) -> None:
        counted = [w for w in waits if w is not None]
        if counted:
            raise Limited(max(1.0, max(counted)))

    def sign_in(self, client: str, username: str) -> Attempt:
        """A log-in starts; Limited if refused."""
        user = username.lower()
        address = ("sign-in", client)
        pair = ("sign-in", user, client)
        account = ("account", user)
        keys = [
            (self.attempts, address),
            (self.failures, pair),
            (self.accounts, account),
            (self.familiar, pair),
        ]
        with self.counts.scope(keys) as c:
            familiar = c.seen(self.familiar, pair)
            self._refuse(
                c.wait(self.attempts, address),
                c.wait(self.failures, pair),
                None if familiar else c.wait(self.accounts, account),
            )
            c.add(self.attempts, address)
            at = c.add(self.failures, pair)
            account_at = None if familiar else c.add(self.accounts, account)

        def refund(c: Tally) -> None:
            c.remove(self.failures, pair, at)
            if account_at is not None:
                c.remove(self.accounts, account, account_at)

        def success(c: Tally) -> None:
            # The owner's own failures from this address are forgiven; the account-wide
            # count is not, or every sign-in of the owner would hand a botnet fresh guesses.
            c.clear(self.failures, pair)
            if account_at is not None:
                c.remove(self.accounts, account, account_at)
            c.add(self.familiar, pair)

        return Attempt(self._runner(keys[1:]), on_success=success, on_other=refund)

    def register(self, client: str, username: str) -> Attempt:
        """A registration starts (counted like a log-in attempt); Limited if refused."""
        address = ("sign-in", client)
        pair = ("sign-in", username.lower(), client)
        with self.counts.scope([(self.attempts, address)]) as c:
            self._refuse(c.wait(self.attempts, address))
            c.add(self.attempts, address)

        def success(c: Tally) -> None:
            c.add(self.familiar, pair)

        return Attempt(self._runner([(self.familiar, pair)]), on_success=success)

    def password_change(self, client: str, user_id: int) -> Attempt:
        """A password change starts; Limited if refused."""
        address = ("password", client)
        account = ("password", user_id)
        keys = [(self.attempts, address), (self.failures, account)]
        with self.counts.scope(keys) as c:
            self._refuse(c.wait(self.attempts, address), c.wait(self.failures, account))
            c.add(self.attempts, address)
            at = c.add(self.failures, account)
        return Attempt(
            self._runner(keys[1:]),
            on_success=lambda c: c.clear(self.failures, account),
            on_other=lambda c: c.remove(self.failures, account, at),
        )
