"""The limits counted in the database (server/store/counts.py), as replicas sharing one
count them: every scenario of tests/unit/test_ratelimit.py again on a real SQLite file and
a real PostgreSQL server, then what only sharing brings: two servers' counts add up, racing
tries cannot overrun a limit, the table stays bounded, and a database outage answers
Unavailable without losing a counted failure."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from server.api.ratelimit import Limited, Limits
from server.counting import MAX_KEYS
from server.errors import Unavailable
from server.service.predictions import HourlyQuota
from server.store.counts import DatabaseCounts
from server.store.db import Database
from server.store.models import RateCount
from tests.support.server_process import free_port
from tests.unit.test_ratelimit import (  # noqa: F401  (the scenarios, run here on a database)
    Clock,
    Make,
    fail,
    refused,
    test_a_try_is_counted_while_in_flight_and_refunded_unless_it_fails,
    test_failures_count_per_username_and_address_and_a_success_clears_them,
    test_idle_keys_are_dropped_on_any_call,
    test_many_distinct_clients_and_usernames_are_capped,
    test_password_changes_count_per_address_and_failures_per_account,
    test_refused_tries_store_nothing_so_memory_stays_bounded,
    test_strangers_failures_do_not_lock_the_owner_out,
    test_successful_sign_ins_are_not_failures,
    test_the_account_wide_limit_holds_new_addresses_but_not_familiar_ones,
)


@pytest.fixture
def databases(database_url: str) -> Iterator[list[Database]]:
    """Database objects on one fresh database; each is what one server process holds."""
    opened: list[Database] = []
    yield opened
    for db in opened:
        db.dispose()


def open_db(databases: list[Database], url: str) -> Database:
    db = Database(url)
    db.create_all()
    databases.append(db)
    return db


@pytest.fixture
def make(database_url: str, databases: list[Database]) -> Make:
    """Limits counted in the database, cleaned up after every scope (as a server does every
    10 s) so that the sizes the scenarios check are exact."""

    def make(
        rate: tuple[int, float] = (3, 60),
        account: tuple[int, float] = (100, 3600),
        max_keys: int = MAX_KEYS,
    ) -> tuple[Limits, Clock]:
        clock = Clock()
        counts = DatabaseCounts(
            open_db(databases, database_url), max_keys, clock, cleanup_every_s=0
        )
        return Limits(rate, account, counts=counts), clock

    return make


@pytest.fixture
def spray() -> int:
    return 200


def replicas(database_url: str, databases: list[Database], n: int = 2, rate=(5, 60)):
    """`n` servers' limits on one database, each with its own connections."""
    return [
        Limits(rate, (100, 3600), counts=DatabaseCounts(open_db(databases, database_url)))
        for _ in range(n)
    ]


def test_the_replicas_counts_add_up(database_url: str, databases: list[Database]) -> None:
    a, b = replicas(database_url, databases)
    for lim in (a, b, a, b, a):
        fail(lim, "198.51.100.1", "alice")
    refused(lambda: b.sign_in("198.51.100.1", "bob"))  # the address spent its 5 on both
    refused(lambda: a.register("198.51.100.1", "carol"))
    a.sign_in("198.51.100.2", "alice").succeeded()  # another address is its own
    # a success on one server forgives the failures the other counted
    for lim in (b, b, a, a):
        fail(lim, "198.51.100.3", "dave")
    b.sign_in("198.51.100.3", "dave").succeeded()
    assert a.sizes()["failures"] == 1  # alice's, from 198.51.100.1


def test_racing_tries_on_two_servers_cannot_overrun_a_limit(
    database_url: str, databases: list[Database]
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite serves one process: its scopes take turns in that process")
    servers = replicas(database_url, databases, n=2, rate=(5, 60))
    outcomes: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(16)

    def one(i: int) -> None:
        go.wait()
        try:
            attempt = servers[i % 2].sign_in("203.0.113.7", f"user{i}")
        except Limited:
            result = "refused"
        else:
            attempt.failed()
            result = "counted"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["counted"] * 5 + ["refused"] * 11


def test_the_anonymous_quota_is_shared_too(database_url: str, databases: list[Database]) -> None:
    a, b = (HourlyQuota(3, DatabaseCounts(open_db(databases, database_url))) for _ in range(2))
    taken = [q.take("198.51.100.9") for q in (a, b, a)]
    assert all(wait is None for wait, _ in taken)
    wait, when = b.take("198.51.100.9")
    assert when is None and 3000 < wait <= 3600
    a.give_back("198.51.100.9", taken[1][1])  # the study was not kept after all
    assert b.take("198.51.100.9")[0] is None


def test_expired_counts_are_deleted(database_url: str, databases: list[Database]) -> None:
    db = open_db(databases, database_url)
    clock = Clock()
    counts = DatabaseCounts(db, clock=clock, cleanup_every_s=10)
    lim = Limits((3, 60), (100, 3600), counts=counts)
    for i in range(50):
        fail(lim, f"192.0.2.{i}", f"u{i}")
    clock.now += 3600
    # The next counting cleans up (at most every 10 s): only the new try's keys are left.
    fail(lim, "192.0.2.200", "late")
    with db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(RateCount)).scalar_one() == 3


def test_an_unreachable_database_is_unavailable_and_a_counted_failure_stands(
    database_url: str, databases: list[Database]
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("needs a database server to lose")
    down = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    databases.append(down)
    with pytest.raises(Unavailable):
        Limits((3, 60), (100, 3600), counts=DatabaseCounts(down)).sign_in("192.0.2.1", "x")
    # A try whose end cannot be recorded keeps the failure counted at its start, and the
    # caller's answer is not replaced by the outage.
    db = open_db(databases, database_url)
    counts = DatabaseCounts(db)
    lim = Limits((3, 60), (100, 3600), counts=counts)
    attempt = lim.sign_in("192.0.2.2", "erin")
    counts.db = down
    attempt.ended_otherwise()  # would have refunded; logged instead
    counts.db = db
    assert lim.sizes()["failures"] == 1
