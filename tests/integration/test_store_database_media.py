"""The store with its media in the database (CHEXRAY_MEDIA_STORE=database), on a real SQLite
file and a real PostgreSQL server: the guarantees of the media folder (tests/integration/
test_store.py) hold, kept by one transaction per study and a foreign key per file: a study
whole or not at all (a full database, a deleted owner, a cancellation), no file outliving
its study or written for one that is gone, account deletion racing an upload, expiry; and
the API serving such studies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlmodel import update

from server.errors import InsufficientStorage, Unavailable
from server.store.media_db import DatabaseMedia
from server.store.models import Study
from server.store.store import OwnerGone, Store
from server.store.studies import new_study_id
from tests.conftest import create_database
from tests.integration.test_store import (
    FILES,
    HOUR,
    PNG,
    _cancel_while_blocked,
    _delete_account_while_committing,
    _wait_for_a_lock_wait,
    ids,
    row,
    user,
)
from tests.support.api import client, error, register, upload
from tests.support.server_process import free_port


def open_store(url: str, tmp_path: Path) -> Store:
    s = Store(url, tmp_path / "media", anonymous_ttl=HOUR, orphan_grace=HOUR, media="database")
    asyncio.run(s.open())
    return s


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    s = open_store(database_url, tmp_path)
    try:
        yield s
    finally:
        s.close()


def age(store: Store, study_id: str, by) -> None:
    with store.db.session() as s:
        old = s.get(Study, study_id).created_at - by
        s.exec(update(Study).where(Study.id == study_id).values(created_at=old))
        s.commit()


def files(store: Store) -> set[tuple[str, str]]:
    """(study id, name) of every file in the database."""
    with store.db.session() as s:
        return {tuple(r) for r in s.exec(text("SELECT study_id, name FROM study_files")).all()}


def test_a_study_is_its_row_and_files_and_nothing_goes_to_the_folder(
    store: Store, tmp_path: Path
) -> None:
    assert isinstance(store.media, DatabaseMedia)
    study = asyncio.run(store.add_study(row(), FILES))
    assert files(store) == {(study.id, "image.png"), (study.id, "heatmap.png")}
    assert asyncio.run(store.read_file(study.id, "image.png")) == PNG
    assert asyncio.run(store.read_file(study.id, "heatmap-edema.png")) is None
    assert not (tmp_path / "media").exists()
    assert "in the database" in store.description


def test_a_heatmap_of_a_live_study_is_kept_and_replaced(store: Store) -> None:
    study = asyncio.run(store.add_study(row(), FILES))
    assert asyncio.run(store.write_file(study.id, "heatmap-edema.png", PNG))
    assert asyncio.run(store.write_file(study.id, "heatmap-edema.png", PNG + b"again"))
    assert asyncio.run(store.read_file(study.id, "heatmap-edema.png")) == PNG + b"again"


def test_deleting_a_study_deletes_its_files_and_none_can_be_written_after(store: Store) -> None:
    study = asyncio.run(store.add_study(row(), FILES))
    assert asyncio.run(store.delete_study(study.id))
    assert files(store) == set()
    assert not asyncio.run(store.write_file(study.id, "heatmap-edema.png", PNG))
    assert files(store) == set()


def test_a_heatmap_racing_the_deletion_does_not_bring_the_study_back(
    store: Store, database_url: str
) -> None:
    """The deletion's transaction is open (row deleted, not committed) when the heatmap is
    written: the write waits for it, then finds the study gone."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite takes one writer at a time: no write can interleave")
    study = asyncio.run(store.add_study(row(), FILES))
    conn = store.db.engine.connect()
    tx = conn.begin()
    conn.execute(text("DELETE FROM studies WHERE id = :id"), {"id": study.id})
    written: list[bool] = []
    writer = threading.Thread(
        target=lambda: written.append(
            asyncio.run(store.write_file(study.id, "heatmap-edema.png", PNG))
        )
    )
    writer.start()
    _wait_for_a_lock_wait(store)
    tx.commit()
    conn.close()
    writer.join(30)
    assert written == [False] and files(store) == set()


def test_a_study_whose_owner_is_gone_keeps_nothing(store: Store) -> None:
    with pytest.raises(OwnerGone):
        asyncio.run(store.add_study(row(owner_id=12345), FILES))
    assert ids(store) == set() and files(store) == set()


def test_cancelled_after_the_commit_keeps_nothing(store: Store, monkeypatch) -> None:
    blocked, release = threading.Event(), threading.Event()
    real_add = store.media.add_study

    def add_then_wait(s, study, data):
        added = real_add(s, study, data)
        blocked.set()
        release.wait(10)
        return added

    monkeypatch.setattr(store.media, "add_study", add_then_wait)
    _cancel_while_blocked(store, blocked, release, monkeypatch)
    assert ids(store) == set() and files(store) == set()


def test_a_full_sqlite_file_answers_storage_full_and_keeps_nothing(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'chexray.db'}", tmp_path)
    try:
        kept = asyncio.run(store.add_study(row(), FILES))
        with store.db.session() as s:
            pages = s.exec(text("PRAGMA page_count")).one()[0]

        @event.listens_for(store.db.engine, "connect")
        def small(conn, _record) -> None:  # room for a few KB more, not for 2 MB
            conn.execute(f"PRAGMA max_page_count = {pages + 8}")

        store.db.engine.dispose()
        big = {"image.png": os.urandom(2 * 1024 * 1024), "heatmap.png": PNG}
        with pytest.raises(InsufficientStorage) as caught:
            asyncio.run(store.add_study(row(), big))
        assert caught.value.code == "storage_full"
        assert ids(store) == {kept.id}
        assert files(store) == {(kept.id, "image.png"), (kept.id, "heatmap.png")}
    finally:
        store.close()


@contextlib.contextmanager
def small_tablespace(cluster, size_mb: int = 3) -> Iterator[Path]:
    """A tmpfs of `size_mb` for a PostgreSQL tablespace (needs root, as the cluster runs as
    postgres then); skips where it cannot be mounted."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small file system needs root")
    where = Path(tempfile.mkdtemp(prefix="chexray-small-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        shutil.chown(where, "postgres", "postgres")
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def test_a_full_postgresql_disk_answers_storage_full_and_keeps_nothing(
    tmp_path: Path, postgres_cluster
) -> None:
    """The files' table on a tablespace with 3 MB of room: a study that does not fit is
    refused with storage_full (PostgreSQL's disk_full), and nothing of it is kept."""
    url = create_database(postgres_cluster.url, "chexray")
    store = open_store(url, tmp_path)
    with small_tablespace(postgres_cluster) as where:
        try:
            with store.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text(f"CREATE TABLESPACE small LOCATION '{where}'"))
                c.execute(text("ALTER TABLE study_files SET TABLESPACE small"))
            kept = asyncio.run(store.add_study(row(), FILES))
            big = {"image.png": os.urandom(4 * 1024 * 1024), "heatmap.png": PNG}
            with pytest.raises(InsufficientStorage) as caught:
                asyncio.run(store.add_study(row(), big))
            assert caught.value.code == "storage_full"
            assert ids(store) == {kept.id}
            assert files(store) == {(kept.id, "image.png"), (kept.id, "heatmap.png")}
            # A heatmap that does not fit is refused alike (the service answers it anyway).
            with pytest.raises(InsufficientStorage):
                asyncio.run(store.write_file(kept.id, "heatmap-edema.png", big["image.png"]))
            assert asyncio.run(store.read_file(kept.id, "image.png")) == PNG
        finally:
            with store.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("DROP TABLE study_files"))
                c.execute(text("DROP TABLESPACE small"))
            store.close()


def test_deleting_an_account_removes_a_study_committed_meanwhile(
    store: Store, database_url: str
) -> None:
    uid = user(store)
    kept = asyncio.run(store.add_study(row(owner_id=uid), FILES))
    # An upload in flight: its row and files inserted, not yet committed.
    late = row(owner_id=uid)
    session = store.db.session()
    session.add(late)
    session.flush()
    session.execute(
        text("INSERT INTO study_files (study_id, name, data) VALUES (:s, 'image.png', :d)"),
        {"s": late.id, "d": PNG},
    )
    deleted = _delete_account_while_committing(store, uid, database_url, session.commit)
    session.close()
    assert sorted(deleted) == sorted([kept.id, late.id])
    assert ids(store) == set() and files(store) == set()


def test_expired_anonymous_studies_go_with_their_files_and_the_sweep_has_nothing_else(
    store: Store,
) -> None:
    expired = asyncio.run(store.add_study(row(), FILES))
    fresh = asyncio.run(store.add_study(row(), FILES))
    age(store, expired.id, 2 * HOUR)
    report = asyncio.run(store.sweep(full=True))
    assert report.expired == 1 and not report.marked_missing and not report.orphan_folders
    assert ids(store) == {fresh.id}
    assert {s for s, _ in files(store)} == {fresh.id}


def test_an_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    store = Store(url, tmp_path, media="database")
    try:
        with pytest.raises(Unavailable) as caught:
            asyncio.run(store.read_file(new_study_id(), "image.png"))
        assert caught.value.code == "database_unavailable"
        with pytest.raises(Unavailable):
            asyncio.run(store.write_file(new_study_id(), "heatmap.png", PNG))
    finally:
        store.close()


# -- through the API -----------------------------------------------------------------------


def test_the_api_serves_studies_kept_in_the_database(
    tiny_repo: Path, tmp_path: Path, database_url: str
) -> None:
    with client(tiny_repo, tmp_path, database_url, media_store="database") as c:
        store = c.app.state.service.store
        alice = register(c, "alice")
        body = upload(c, alice)
        sid = body["id"]
        image = c.get(body["urls"]["image"], headers=alice)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        assert c.get(f"/media/{sid}/image.png", headers=alice).content == image.content
        edema = c.get(body["urls"]["heatmaps"]["Edema"], headers=alice)
        assert edema.status_code == 200 and edema.content.startswith(b"\x89PNG")
        assert (sid, "heatmap-edema.png") in files(store)
        assert c.get(body["urls"]["heatmaps"]["Edema"], headers=alice).content == edema.content
        anonymous = upload(c, store="true")
        assert not (tmp_path / "media").exists()
        r = c.delete(
            anonymous["urls"]["study"], headers={"X-Delete-Token": anonymous["delete_token"]}
        )
        assert r.status_code == 204
        assert c.delete(body["urls"]["study"], headers=alice).status_code == 204
        error(c.get(body["urls"]["image"], headers=alice), 404, "not_found")
        upload(c, alice, seed=3)
        assert c.delete("/api/v1/me", headers=alice).status_code == 204
        assert files(store) == set() and ids(store) == set()
