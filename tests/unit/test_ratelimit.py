"""The sign-in and password limits (server/api/ratelimit.py), on a clock the test moves,
counted in memory. The same scenarios run on the database counts, on SQLite and PostgreSQL,
in tests/integration/test_ratelimit_shared.py: there `make` counts in a database and
`spray` is smaller (every try is a transaction)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from server.api.ratelimit import Limited, Limits, SlidingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# make(rate=(3, 60), account=(100, 3600), max_keys=...) -> (Limits, the clock it counts by)
Make = Callable[..., tuple[Limits, Clock]]


@pytest.fixture
def make() -> Make:
    def make(
        rate: tuple[int, float] = (3, 60), account: tuple[int, float] = (100, 3600), **kw
    ) -> tuple[Limits, Clock]:
        clock = Clock()
        return Limits(rate, account, clock=clock, **kw), clock

    return make


@pytest.fixture
def spray() -> int:
    """How many tries the tests that flood the limits make."""
    return 20_000


def fail(lim: Limits, client: str, username: str) -> None:
    lim.sign_in(client, username).failed()


def refused(start) -> float:
    with pytest.raises(Limited) as caught:
        start()
    return caught.value.retry_after


def sizes(lim: Limits) -> dict[str, int]:
    return lim.sizes()


def test_a_window_allows_n_per_s_and_says_how_long_to_wait() -> None:
    clock = Clock()
    w = SlidingWindow(3, 60, clock=clock)
    for _ in range(3):
        assert w.wait("k") is None
        w.add("k")
        clock.now += 10
    assert w.wait("k") == pytest.approx(30)  # the first of the three leaves at +60
    clock.now += 30
    assert w.wait("k") is None
    assert w.wait("other") is None


def test_refused_tries_store_nothing_so_memory_stays_bounded(make: Make, spray: int) -> None:
    """An attacker whose address is spent sprays usernames: nothing new is kept."""
    lim, _ = make()
    for i in range(3):
        fail(lim, "203.0.113.9", f"victim{i}")
    before = sizes(lim)
    for i in range(spray):
        refused(lambda i=i: lim.sign_in("203.0.113.9", f"spray{i}"))
        refused(lambda: lim.register("203.0.113.9", "someone"))
    assert sizes(lim) == before
    assert max(before.values()) <= 3


def test_many_distinct_clients_and_usernames_are_capped(make: Make, spray: int) -> None:
    """A botnet: every try comes from a new address at a new username, every one allowed
    and failed; each window keeps at most max_keys keys, the least recently used going."""
    cap = spray // 40
    lim, clock = make(max_keys=cap)
    for i in range(spray // 4):
        fail(lim, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"user{i}")
        clock.now += 0.001
    assert all(n <= cap for n in sizes(lim).values()), sizes(lim)
    assert sizes(lim)["attempts"] == cap


def test_idle_keys_are_dropped_on_any_call(make: Make) -> None:
    lim, clock = make()
    for i in range(300):
        fail(lim, f"192.0.2.{i % 250}", f"u{i}")
    assert sizes(lim)["attempts"] == 250
    clock.now += 61
    lim.sign_in("198.51.100.1", "late").failed()
    assert sizes(lim)["attempts"] == 1 and sizes(lim)["failures"] == 1
    # the account-wide window is longer (3600 s): its keys wait for their own hour
    assert sizes(lim)["accounts"] == 301
    clock.now += 3600
    lim.sign_in("198.51.100.2", "later").failed()
    assert sizes(lim)["accounts"] == 1


def test_strangers_failures_do_not_lock_the_owner_out(make: Make) -> None:
    lim, _ = make()
    for stranger in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        for _ in range(3):
            fail(lim, stranger, "Alice")
        refused(lambda s=stranger: lim.sign_in(s, "alice"))
    # the owner, from an address never seen before: her password is tried, and works
    lim.sign_in("203.0.113.5", "alice").succeeded()


def test_failures_count_per_username_and_address_and_a_success_clears_them(make: Make) -> None:
    lim, clock = make(rate=(3, 60))
    home = "203.0.113.5"
    fail(lim, home, "bob")
    fail(lim, home, "bob")
    lim.sign_in(home, "bob").succeeded()  # the client window is full now (3 attempts)
    clock.now += 61  # the attempts leave; the two failures would have too, but...
    fail(lim, home, "bob")
    fail(lim, home, "bob")
    lim.sign_in(home, "bob").succeeded()  # ...a success forgave them: three more failures
    clock.now += 61
    for _ in range(3):
        fail(lim, home, "bob")
    assert 1 <= refused(lambda: lim.sign_in(home, "bob")) <= 60


def test_successful_sign_ins_are_not_failures(make: Make) -> None:
    """A script that signs in often is limited per address (attempts), never per username."""
    lim, _ = make(rate=(3, 60))
    for i in range(30):
        lim.sign_in(f"198.51.100.{i}", "carol").succeeded()
    assert sizes(lim)["failures"] == 0 and sizes(lim)["accounts"] == 0


def test_the_account_wide_limit_holds_new_addresses_but_not_familiar_ones(make: Make) -> None:
    """A botnet, one guess per address: after the account-wide count, addresses new to the
    account are refused; the owner's familiar address (a success there) is not."""
    lim, clock = make(rate=(3, 60), account=(5, 3600))
    home = "203.0.113.5"
    lim.register(home, "dave").succeeded()
    for i in range(5):
        fail(lim, f"198.51.100.{i}", "dave")
    wait = refused(lambda: lim.sign_in("198.51.100.99", "dave"))
    assert 3000 < wait <= 3600
    refused(lambda: lim.sign_in("192.0.2.1", "Dave"))  # the owner on a new address too
    lim.sign_in(home, "dave").succeeded()  # registered from here: familiar
    clock.now += 61
    fail(lim, home, "dave")  # the owner's own typo counts per address only
    lim.sign_in(home, "dave").succeeded()
    lim.sign_in("198.51.100.7", "erin").succeeded()  # other accounts are untouched


def test_a_try_is_counted_while_in_flight_and_refunded_unless_it_fails(make: Make) -> None:
    lim, _ = make(rate=(3, 60), account=(3, 3600))
    flying = [lim.sign_in(f"198.51.100.{i}", "fay") for i in range(3)]
    refused(lambda: lim.sign_in("198.51.100.50", "fay"))  # three guesses already in flight
    for attempt in flying:
        attempt.ended_otherwise()  # e.g. the server failed: nothing was guessed
        attempt.failed()  # a second ending is ignored
    for i in range(3):
        fail(lim, f"198.51.100.{60 + i}", "fay")
    refused(lambda: lim.sign_in("198.51.100.70", "fay"))


def test_password_changes_count_per_address_and_failures_per_account(make: Make) -> None:
    lim, clock = make(rate=(3, 60))
    for i in range(3):
        lim.password_change(f"198.51.100.{i}", 7).failed()
    wait = refused(lambda: lim.password_change("203.0.113.1", 7))  # any address
    assert 1 <= wait <= 60
    clock.now += 61
    lim.password_change("203.0.113.1", 8).succeeded()  # another account
    lim.password_change("203.0.113.1", 7).failed()
    lim.password_change("203.0.113.1", 7).succeeded()  # clears the account's failures
    refused(lambda: lim.password_change("203.0.113.1", 9))  # the address spent its 3
    for i in range(3):
        lim.password_change(f"192.0.2.{i}", 7).failed()
    refused(lambda: lim.password_change("192.0.2.9", 7))
    # sign-ins are counted apart from password changes
    lim.sign_in("203.0.113.1", "gina").succeeded()
