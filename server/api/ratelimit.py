"""Limits on sign-ins, registrations and password changes, in this process's memory.

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
cannot overrun a limit. A refused try counts nothing and stores nothing, idle keys are
dropped on every call and each window holds at most `max_keys` keys (the least recently
counted go first), so memory stays bounded whatever the traffic. With several replicas
each enforces the limits on its own share of the traffic.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable
from threading import Lock

FAMILIAR_SECONDS = 30 * 24 * 3600.0
MAX_KEYS = 20_000  # per window; about 0.45 KB a key at N=10, so 30 MB with every window full


class Limited(Exception):
    """Refused: try again in `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:.0f} s")
        self.retry_after = retry_after


class SlidingWindow:
    """At most `attempts` events per `seconds` per key. Keys are kept in the order of their
    last event, so idle ones are dropped from the front; a key keeps only its last
    `attempts` times, all that the decision needs. Not thread-safe (see Limits)."""

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


class Attempt:
    """One counted try in flight: say how it ended, exactly once."""

    def __init__(
        self,
        lock: Lock,
        on_failure: Callable[[], None] = lambda: None,
        on_success: Callable[[], None] = lambda: None,
        on_other: Callable[[], None] = lambda: None,
    ) -> None:
        self._lock = lock
        self._ends = {"failed": on_failure, "succeeded": on_success, "other": on_other}
        self._ended = False

    def _end(self, how: str) -> None:
        with self._lock:
            if not self._ended:
                self._ended = True
                self._ends[how]()

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
    ) -> None:
        def window(attempts: int, seconds: float) -> SlidingWindow:
            return SlidingWindow(attempts, seconds, max_keys, clock)

        self.attempts = window(*rate)  # per client address
        self.failures = window(*rate)  # per (username, address), per account for passwords
        self.accounts = window(*account_rate)  # per username, from unfamiliar addresses
        self.familiar = window(1, FAMILIAR_SECONDS)  # (username, address) signed in lately
        self._lock = Lock()

    def windows(self) -> dict[str, SlidingWindow]:
        return {
            "attempts": self.attempts,
            "failures": self.failures,
            "accounts": self.accounts,
            "familiar": self.familiar,
        }

    @staticmethod
    def _refuse(*waits: float | None) -> None:
        counted = [w for w in waits if w is not None]
        if counted:
            raise Limited(max(1.0, max(counted)))

    def sign_in(self, client: str, username: str) -> Attempt:
        """A log-in starts; Limited if refused."""
        user = username.lower()
        pair = ("sign-in", user, client)
        account = ("account", user)
        with self._lock:
            familiar = self.familiar.seen(pair)
            self._refuse(
                self.attempts.wait(("sign-in", client)),
                self.failures.wait(pair),
                None if familiar else self.accounts.wait(account),
            )
            self.attempts.add(("sign-in", client))
            at = self.failures.add(pair)
            account_at = None if familiar else self.accounts.add(account)

        def refund() -> None:
            self.failures.remove(pair, at)
            if account_at is not None:
                self.accounts.remove(account, account_at)

        def success() -> None:
            # The owner's own failures from this address are forgiven; the account-wide
            # count is not, or every sign-in of the owner would hand a botnet fresh guesses.
            self.failures.clear(pair)
            if account_at is not None:
                self.accounts.remove(account, account_at)
            self.familiar.add(pair)

        return Attempt(self._lock, on_success=success, on_other=refund)

    def register(self, client: str, username: str) -> Attempt:
        """A registration starts (counted like a log-in attempt); Limited if refused."""
        pair = ("sign-in", username.lower(), client)
        with self._lock:
            self._refuse(self.attempts.wait(("sign-in", client)))
            self.attempts.add(("sign-in", client))
        return Attempt(self._lock, on_success=lambda: self.familiar.add(pair))

    def password_change(self, client: str, user_id: int) -> Attempt:
        """A password change starts; Limited if refused."""
        account = ("password", user_id)
        with self._lock:
            self._refuse(self.attempts.wait(("password", client)), self.failures.wait(account))
            self.attempts.add(("password", client))
            at = self.failures.add(account)
        return Attempt(
            self._lock,
            on_success=lambda: self.failures.clear(account),
            on_other=lambda: self.failures.remove(account, at),
        )
