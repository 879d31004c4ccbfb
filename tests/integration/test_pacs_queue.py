"""The PACS transfer queue on real SQLite and PostgreSQL: one claim at a time per study
(replicas sharing the database never send one study twice), retries wait their turn, the
row goes with its study and its account."""

from __future__ import annotations

import asyncio
import datetime as dt

from server.store import accounts
from server.store import pacs as transfers
from server.store.store import Store
from tests.integration import test_store
from tests.integration.test_store import FILES, row

store = test_store.store  # the same fixture: a Store on each kind of database

LEASE = dt.timedelta(minutes=5)


def call(store: Store, fn, *args):
    with store.db.session() as s:
        return fn(s, *args)


def stored_study(store: Store, owner: int | None = None) -> str:
    return asyncio.run(store.add_study(row(owner), FILES)).id


def test_a_queued_study_is_claimed_once_until_its_lease_ends(store: Store) -> None:
    first, second = stored_study(store), stored_study(store)
    assert call(store, transfers.queue, first) and call(store, transfers.queue, second)
    assert not call(store, transfers.queue, "no-such-study-0000")
    claimed = call(store, transfers.claim_due, LEASE, 10)
    assert sorted(claimed) == sorted([first, second])
    assert call(store, transfers.claim_due, LEASE, 10) == []  # held: no second sender
    assert call(store, transfers.counts) == {"pending": 2, "sent": 0, "failed": 0}

    # A retry waits for its time; an expired lease frees a transfer whose sender died.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    call(store, transfers.record, first, transfers.PENDING, "unreachable (try 1)", later)
    with store.db.session() as s:
        t = s.get(transfers.PacsTransfer, second)
        t.lease_until = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        s.add(t)
        s.commit()
    assert call(store, transfers.claim_due, LEASE, 10) == [second]
    call(store, transfers.record, second, transfers.SENT, "6 objects", None, ["1.2.3"])
    sent = call(store, transfers.get, second)
    assert (sent.status, sent.attempts, sent.sent_instances) == ("sent", 1, ["1.2.3"])
    assert sent.sent_at is not None and sent.lease_until is None
    waiting = call(store, transfers.get, first)
    assert (waiting.status, waiting.attempts, waiting.detail) == (
        "pending",
        1,
        "unreachable (try 1)",
    )

    # Queued again: from the start, due now.
    assert call(store, transfers.queue, second)
    again = call(store, transfers.get, second)
    assert (again.status, again.attempts, again.sent_at) == ("pending", 0, None)


def test_the_transfer_goes_with_its_study_and_its_account(store: Store) -> None:
    with store.db.session() as s:
        owner = accounts.create_user(s, "alice", "correct horse battery").id
    study, other = stored_study(store, owner), stored_study(store, owner)
    call(store, transfers.queue, study)
    call(store, transfers.queue, other)
    assert asyncio.run(store.delete_study(study))
    assert call(store, transfers.get, study) is None
    call(store, transfers.record, study, transfers.SENT, "late answer")  # a no-op, no error
    asyncio.run(store.delete_account(owner))
    assert call(store, transfers.get, other) is None
    assert call(store, transfers.counts) == {"pending": 0, "sent": 0, "failed": 0}
