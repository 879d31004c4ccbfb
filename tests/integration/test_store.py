"""The store's consistency on real SQLite files and a real PostgreSQL server: a study's row
exists only with its image file and its folder only with its row, through full disks,
cancellations, deletions racing writes, account deletion racing uploads, crashes (the
sweep) and an unreachable database."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import update

from server.errors import InsufficientStorage, Unavailable
from server.store import accounts, studies
from server.store.models import Study
from server.store.store import OwnerGone, Store
from server.store.studies import new_study_id
from tests.conftest import create_database
from tests.support.server_process import free_port

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
HOUR = dt.timedelta(hours=1)


def row(owner_id: int | None = None, **fields) -> Study:
    return Study(
        id=new_study_id(),
        owner_id=owner_id,
        model_version="test",
        trained=False,
        probabilities=[0.1] * 5,
        calls=[False] * 5,
        thresholds=[0.5] * 5,
        cam_probabilities=[0.1] * 5,
        member_probabilities={},
        cam_maps=[],
        image_format="png",
        width=2,
        height=2,
        bit_depth=8,
        notes=[],
        timings={},
        **fields,
    )


FILES = {"image.png": PNG, "heatmap.png": PNG}


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    s = Store(database_url, tmp_path / "media", anonymous_ttl=HOUR, orphan_grace=HOUR)
    asyncio.run(s.open())
    try:
        yield s
    finally:
        s.close()


def folders(store: Store) -> set[str]:
    return set(store.media.study_folders())


def ids(store: Store) -> set[str]:
    with store.db.session() as s:
        return set(s.exec(text("SELECT id FROM studies")).scalars())


def user(store: Store, name: str = "alice") -> int:
    with store.db.session() as s:
        return accounts.create_user(s, name, "correct horse battery").id


def age(store: Store, study_id: str, by: dt.timedelta) -> None:
    """Make a study (row and files) look `by` older, as if written that long ago."""
    with store.db.session() as s:
        old = s.get(Study, study_id).created_at - by
        s.exec(update(Study).where(Study.id == study_id).values(created_at=old))
        s.commit()
    make_old(store.media.folder(study_id), by)


def make_old(path: Path, by: dt.timedelta) -> None:
    when = time.time() - by.total_seconds()
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(p, (when, when), follow_symlinks=False)


# -- 1. a file written for a study deleted meanwhile ---------------------------------------


def test_a_heatmap_written_after_the_deletion_does_not_bring_the_folder_back(store) -> None:
    study = asyncio.run(store.add_study(row(), FILES))
    assert asyncio.run(store.delete_study(study.id))
    assert not asyncio.run(store.write_file(study.id, "heatmap-edema.png", PNG))
    assert study.id not in folders(store)


def test_a_heatmap_written_between_the_row_and_the_folder_deletion_is_removed(store) -> None:
    # The deleter has removed the row but not yet the folder when the heatmap arrives.
    study = asyncio.run(store.add_study(row(), FILES))
    with store.db.session() as s:
        assert studies.delete_study(s, study.id)
    assert not asyncio.run(store.write_file(study.id, "heatmap-edema.png", PNG))
    assert study.id not in folders(store)


def test_a_heatmap_of_a_live_study_is_kept(store) -> None:
    study = asyncio.run(store.add_study(row(), FILES))
    assert asyncio.run(store.write_file(study.id, "heatmap-edema.png", PNG))
    assert asyncio.run(store.read_file(study.id, "heatmap-edema.png")) == PNG


# -- 2. all of a study or none of it --------------------------------------------------------


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Lower this process's largest file size (RLIMIT_FSIZE) for one block: a write past
    it fails with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_keeps_neither_files_nor_row(store) -> None:
    big = {"image.png": PNG, "heatmap.png": PNG + os.urandom(4 * 1024 * 1024)}
    with (
        file_size_limit(2 * 1024 * 1024),  # image.png fits, heatmap.png does not
        pytest.raises(InsufficientStorage) as caught,
    ):
        asyncio.run(store.add_study(row(), big))
    assert caught.value.code == "storage_full"
    assert folders(store) == set() and ids(store) == set()
    assert not any(store.media.root.rglob("*")), "no temporary file either"


def test_a_study_whose_owner_is_gone_keeps_no_files(store) -> None:
    with pytest.raises(OwnerGone):
        asyncio.run(store.add_study(row(owner_id=12345), FILES))
    assert folders(store) == set() and ids(store) == set()


def _cancel_while_blocked(
    store: Store, blocked: threading.Event, release: threading.Event, monkeypatch
) -> None:
    """Start add_study, cancel it while its worker thread is held, then let the thread go;
    return once that thread has finished (asyncio does not wait for it)."""
    thread_done = threading.Event()
    real_add = store._add_study

    def add(*args):
        try:
            return real_add(*args)
        finally:
            thread_done.set()

    monkeypatch.setattr(store, "_add_study", add)

    async def main() -> None:
        task = asyncio.create_task(store.add_study(row(), FILES))
        while not blocked.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        threading.Timer(0.2, release.set).start()  # the thread goes on after the cancel
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert thread_done.wait(10)


def test_cancelled_while_writing_files_keeps_nothing(store, monkeypatch) -> None:
    blocked, release = threading.Event(), threading.Event()
    real_write = store.media.write

    def slow_write(*args, **kwargs):
        path = real_write(*args, **kwargs)
        blocked.set()
        release.wait(10)
        return path

    monkeypatch.setattr(store.media, "write", slow_write)
    _cancel_while_blocked(store, blocked, release, monkeypatch)
    assert folders(store) == set() and ids(store) == set()


def test_cancelled_after_the_row_is_committed_keeps_nothing(store, monkeypatch) -> None:
    # The worker thread commits the row after the caller was cancelled: the undoing must
    # wait for it and remove the row too, not only the files.
    blocked, release = threading.Event(), threading.Event()
    real_add = studies.add_study

    def add_then_wait(s, study):
        added = real_add(s, study)
        blocked.set()
        release.wait(10)
        return added

    monkeypatch.setattr(studies, "add_study", add_then_wait)
    _cancel_while_blocked(store, blocked, release, monkeypatch)
    assert folders(store) == set() and ids(store) == set()


# -- 3. account deletion racing an upload --------------------------------------------------


def test_deleting_an_account_removes_the_files_of_a_study_committed_meanwhile(
    store, database_url: str
) -> None:
    uid = user(store)
    kept = asyncio.run(store.add_study(row(owner_id=uid), FILES))
    # An upload in flight: its files are written and its row is inserted but not yet
    # committed when the account deletion starts.
    late = row(owner_id=uid)
    for name, data in FILES.items():
        store.media.write(late.id, name, data, create=True)
    conn = store.db.engine.connect()
    tx = conn.begin()
    conn.execute(
        Study.__table__.insert().values(
            **{c.name: getattr(late, c.name) for c in Study.__table__.columns}
        )
    )
    deleted = _delete_account_while_committing(store, uid, database_url, tx.commit)
    conn.close()
    assert sorted(deleted) == sorted([kept.id, late.id])
    assert folders(store) == set() and ids(store) == set()


def _delete_account_while_committing(
    store: Store, uid: int, database_url: str, commit
) -> list[str]:
    """Start deleting the account, let it reach the upload's open transaction, then commit
    that transaction; the study ids the deletion removed."""
    deleted: list[str] = []
    deleter = threading.Thread(
        target=lambda: deleted.extend(asyncio.run(store.delete_account(uid)))
    )
    deleter.start()
    if database_url.startswith("postgresql"):
        _wait_for_a_lock_wait(store)
    else:
        time.sleep(0.5)  # SQLite: the deletion waits for the write lock meanwhile
    commit()
    deleter.join(30)
    return deleted


def _wait_for_a_lock_wait(store: Store) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with store.db.engine.connect() as c:
            waiting = c.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar()
        if waiting:
            return
        time.sleep(0.02)
    pytest.fail("the account deletion never waited for the upload's transaction")


def test_an_upload_after_the_account_is_gone_keeps_no_files(store) -> None:
    uid = user(store)
    asyncio.run(store.delete_account(uid))
    with pytest.raises(OwnerGone):
        asyncio.run(store.add_study(row(owner_id=uid), FILES))
    assert folders(store) == set()


# -- 4. deletion errors are logged and retried ---------------------------------------------


def test_a_failed_folder_removal_is_logged_and_retried_by_the_sweep(
    store, tmp_path: Path, caplog
) -> None:
    study = asyncio.run(store.add_study(row(), FILES))
    folder = store.media.folder(study.id)
    # A folder that rmtree refuses to remove: a symbolic link to one elsewhere.
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)
    with caplog.at_level(logging.WARNING, "chexray.store"):
        assert asyncio.run(store.delete_study(study.id))
    assert study.id in caplog.text and "remain" in caplog.text
    assert folder.is_symlink()
    folder.unlink()  # what an operator fixes; the sweep removes what is left
    folder.mkdir()
    report = asyncio.run(store.sweep(full=False))
    assert report.retried == 1 and not folder.exists()


# -- 6. the sweep at start-up --------------------------------------------------------------


def test_the_sweep_repairs_what_a_crash_leaves_and_spares_what_is_being_written(store) -> None:
    old = 2 * HOUR
    good = asyncio.run(store.add_study(row(), FILES))
    # Killed between the files and the row, long ago: an orphan folder.
    orphan = new_study_id()
    store.media.write(orphan, "image.png", PNG, create=True)
    make_old(store.media.folder(orphan), old)
    # Being written right now by another replica: a young folder without a row yet.
    young = new_study_id()
    store.media.write(young, "image.png", PNG, create=True)
    # Killed in the middle of write_atomic: a temporary file in a live study.
    stale_tmp = store.media.folder(good.id) / ".heatmap-edema.png.k1ll3d"
    stale_tmp.write_bytes(b"half")
    make_old(stale_tmp, old)
    fresh_tmp = store.media.folder(good.id) / ".heatmap-edema.png.wr1t1ng"
    fresh_tmp.write_bytes(b"half")
    # A row whose image file is gone.
    lost = asyncio.run(store.add_study(row(owner_id=user(store)), FILES))
    age(store, lost.id, old)
    (store.media.folder(lost.id) / "image.png").unlink()

    report = asyncio.run(store.sweep(full=True))

    assert (report.orphan_folders, report.temporaries, report.marked_missing) == (1, 1, 1)
    assert folders(store) == {good.id, young, lost.id}
    assert not stale_tmp.exists() and fresh_tmp.exists()
    assert asyncio.run(store.get_study(good.id, None)) is not None
    # What was too young is judged again by the periodic sweep, once old enough.
    make_old(store.media.folder(young), old)
    make_old(fresh_tmp, old)
    report = asyncio.run(store.sweep(full=False))
    assert (report.orphan_folders, report.temporaries) == (1, 1)
    assert folders(store) == {good.id, lost.id} and not fresh_tmp.exists()
    # The row without its image is hidden, not deleted...
    assert asyncio.run(store.get_study(lost.id, lost.owner_id)) is None
    assert asyncio.run(store.list_studies(lost.owner_id, 1, 10, None)) == ([], 0)
    assert lost.id in ids(store)
    # ... and shown again once its file is back.
    store.media.write(lost.id, "image.png", PNG)
    assert asyncio.run(store.sweep(full=True)).found_again == 1
    assert asyncio.run(store.get_study(lost.id, lost.owner_id)) is not None


# -- 8. anonymous studies expire -----------------------------------------------------------


def test_expired_anonymous_studies_are_unreadable_then_swept(store) -> None:
    uid = user(store)
    expired = asyncio.run(store.add_study(row(), FILES))
    fresh = asyncio.run(store.add_study(row(), FILES))
    owned = asyncio.run(store.add_study(row(owner_id=uid), FILES))
    for study in (expired, owned):
        age(store, study.id, 2 * HOUR)
    assert asyncio.run(store.get_study(expired.id, None)) is None
    assert asyncio.run(store.get_study(fresh.id, None)) is not None
    assert asyncio.run(store.count_anonymous()) == 1
    assert asyncio.run(store.sweep(full=False)).expired == 1
    assert ids(store) == {fresh.id, owned.id} == folders(store)


# -- 7. an unreachable database ------------------------------------------------------------


def test_an_unreachable_database_is_unavailable_not_a_bug(tmp_path: Path) -> None:
    store = Store(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none", tmp_path)
    try:
        with pytest.raises(Unavailable) as caught:
            asyncio.run(store.get_study(new_study_id(), None))
        assert caught.value.code == "database_unavailable" and caught.value.retry_after
        assert asyncio.run(store.ping()) is False
    finally:
        store.close()


def test_a_study_the_database_could_not_withdraw_is_deleted_once_it_answers(
    tmp_path: Path, postgres_cluster, caplog
) -> None:
    """A study kept for an analysis refused after all (its audit record could not be
    written) is withdrawn; with the database away, once it answers again."""
    store = Store(create_database(postgres_cluster.url, "chexray"), tmp_path / "media")
    asyncio.run(store.open())
    try:
        first, second = (asyncio.run(store.add_study(row(), FILES)) for _ in range(2))
        postgres_cluster.stop("fast")
        with caplog.at_level(logging.WARNING):
            assert asyncio.run(store.withdraw_study(first.id)) is False
        assert first.id in caplog.text and "once the database answers again" in caplog.text
        postgres_cluster.start()
        # The first call that succeeds deletes it, row and files, before it returns.
        assert asyncio.run(store.get_study(second.id, None)) is not None
        assert ids(store) == {second.id} and folders(store) == {second.id}

        postgres_cluster.stop("fast")
        assert asyncio.run(store.withdraw_study(second.id)) is False
        postgres_cluster.start()
        assert asyncio.run(store.sweep(full=False)).withdrawn == 1  # or the sweep does
        assert ids(store) == set() and folders(store) == set()
        assert asyncio.run(store.withdraw_study(new_study_id())) is True  # nothing to delete
    finally:
        store.close()
