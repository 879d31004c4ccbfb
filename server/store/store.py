"""The one store object: the database and the media files of studies, behind async methods
that run their blocking work in worker threads, so callers never touch either directly.

What it keeps consistent: a study row exists only while its image file does, and a study
folder only while its row does (or while the study is being written). Every path that
could break this (a full disk, a lost database, a cancelled request, a deletion racing a
write, a crash) either undoes its own work or leaves something the sweep repairs.

The files live in a folder (MediaStore, the default) or in the database (DatabaseMedia,
for replicas without a shared volume; CHEXRAY_MEDIA_STORE=database). There a study's row
and files are one transaction and the files are deleted with the row, so the same
guarantees hold with nothing left for the sweep to repair.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from sqlalchemy.exc import IntegrityError

from server.errors import ChexrayError
from server.files import is_no_space
from server.store import accounts, studies
from server.store.db import Database, database_errors, outage_log, storage_full
from server.store.media import IMAGE_FILE, MediaStore
from server.store.media_db import DatabaseMedia
from server.store.models import Study, utcnow

T = TypeVar("T")
log = logging.getLogger("chexray.store")

BATCH = 500


class OwnerGone(Exception):
    """The study's owner was deleted while the study was being added; nothing was kept."""


@dataclass
class SweepReport:
    expired: int = 0  # anonymous studies past their lifetime, deleted
    orphan_folders: int = 0  # study folders without a row, removed
    temporaries: int = 0  # temporary files of interrupted writes, removed
    marked_missing: int = 0  # rows whose image file is missing, hidden
    found_again: int = 0  # hidden rows whose image is back, shown again
    retried: int = 0  # folders whose earlier removal failed, removed now
    withdrawn: int = 0  # studies of refused analyses the database missed, deleted now

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


class Store:
    def __init__(
        self,
        database_url: str,
        media_dir: Path,
        anonymous_ttl: dt.timedelta = dt.timedelta(hours=24),
        orphan_grace: dt.timedelta = dt.timedelta(hours=1),
        media: str = "folder",
    ) -> None:
        """`anonymous_ttl`: how long an anonymous study is kept; `orphan_grace`: how old a
        folder without a row (or a temporary file) must be before the sweep removes it; a
        younger one may be a study that another replica is writing right now. `media`:
        "folder" (files under `media_dir`) or "database"."""
        self.db = Database(database_url)
        self.media: MediaStore | DatabaseMedia = (
            DatabaseMedia(self.db) if media == "database" else MediaStore(media_dir)
        )
        self.anonymous_ttl = anonymous_ttl
        self.orphan_grace = orphan_grace
        # Folders whose removal failed (their rows are gone): retried by every sweep.
        self._undeleted: set[str] = set()
        self._undeleted_lock = threading.Lock()
        # Studies to delete that the database could not delete when asked (it was away): a
        # study kept for an analysis that was refused after all, or a row whose commit may
        # have gone through as the connection died. Deleted once the database answers again.
        self._withdrawn: set[str] = set()
        self._withdrawn_lock = threading.Lock()
        # Leftovers too young to judge at the start-up sweep: judged again by later sweeps.
        self._suspects: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self._thread(self.db.create_all)

    def close(self) -> None:
        self.db.dispose()

    async def ping(self) -> bool:
        return await self._thread(self.db.ping)

    @property
    def description(self) -> str:
        """Where things are kept, without the database password (for logs)."""
        return f"database {self.db.safe_url}, media {self.media.where}"

    # -- running work ----------------------------------------------------------------------

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(fn, *args)

    def _session_call(self, fn: Callable[..., T], *args: object) -> T:
        # The error mapping encloses the session: closing it rolls back, and on a lost
        # connection that fails too.
        with database_errors(), self.db.session() as s:
            return fn(s, *args)

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(session, *args)` (a function of server/store) in a worker thread, in a
        session of its own. An unreachable database raises `Unavailable`. The first call
        that succeeds after an outage also deletes what the database missed meanwhile."""
        result = await self._thread(self._session_call, fn, *args)
        if self._withdrawn:  # the database answers again
            await self._thread(self._retry_withdrawals)
        return result

    # -- studies to withdraw ---------------------------------------------------------------

    async def withdraw_study(self, study_id: str) -> bool:
        """Delete a study kept for an analysis whose answer never left (refused after the
        study was kept). When the database is away, the deletion waits for it to answer
        again; True when deleted now."""
        try:
            await self.delete_study(study_id)
        except ChexrayError as exc:
            self._withdraw_later(study_id)
            log.warning(  # one study, not every request of an outage: never throttled
                "study %s: kept though its analysis was refused (%s); deleted once the "
                "database answers again",
                study_id,
                exc,
            )
            return False
        return True

    def _withdraw_later(self, study_id: str) -> None:
        with self._withdrawn_lock:
            self._withdrawn.add(study_id)

    def _retry_withdrawals(self) -> int:
        """Delete the studies the database missed; how many it deleted. What it
        still cannot reach waits for the next try."""
        with self._withdrawn_lock:
            pending, self._withdrawn = sorted(self._withdrawn), set()
        deleted = 0
        # Most were never committed (every upload of an outage fails alike): one query per
        # batch finds the few that were.
        for n, batch in enumerate(_batched(pending, BATCH)):
            try:
                for study_id in sorted(self._session_call(studies.existing_ids, batch)):
                    deleted += self._session_call(studies.delete_study, study_id)
                    self._remove_files(study_id)
            except Exception:
                with self._withdrawn_lock:
                    self._withdrawn.update(pending[n * BATCH :])
                break
        if deleted:
            log.info("deleted %d studies of refused analyses the database had missed", deleted)
        return deleted

    # -- anonymous studies -----------------------------------------------------------------

    def anonymous_cutoff(self) -> dt.datetime:
        """Anonymous studies created at or before this have expired."""
        return utcnow() - self.anonymous_ttl

    def expires_at(self, study_created_at: dt.datetime, owner_id: int | None) -> dt.datetime | None:
        return None if owner_id is not None else study_created_at + self.anonymous_ttl

    async def count_anonymous(self) -> int:
        return await self.call(studies.count_anonymous, self.anonymous_cutoff())

    # -- studies ---------------------------------------------------------------------------

    async def add_study(self, study: Study, files: dict[str, bytes]) -> Study:
        """Write the study's files, then its row: all of it is kept, or none of it.

        A full disk raises InsufficientStorage (`storage_full`), an unreachable database
        Unavailable, a deleted owner OwnerGone; each after removing what was written. When
        the caller is cancelled, the worker thread still runs to its end (asyncio does not
        wait for it), so the undoing waits for that thread before removing row and files."""
        finished = threading.Event()

        def work() -> Study:
            try:
                return self._add_study(study, files)
            finally:
                finished.set()

        try:
            return await self._thread(work)
        except anyio.get_cancelled_exc_class():

            def undo() -> None:
                finished.wait()
                self._discard(study.id, row=True)

            with anyio.CancelScope(shield=True):
                await self._thread(undo)
            raise

    def _add_study(self, study: Study, files: dict[str, bytes]) -> Study:
        row_tried = False
        try:
            if isinstance(self.media, DatabaseMedia):
                row_tried = True
                return self._session_call(self.media.add_study, study, files)
            for name, data in files.items():
                self.media.write(study.id, name, data, create=True)
            row_tried = True
            return self._session_call(studies.add_study, study)
        except IntegrityError as error:  # the only constraint a new random id can break
            self._discard(study.id, row=False)
            raise OwnerGone(study.owner_id) from error
        except BaseException as error:
            # A failed commit may still have committed (the connection died after the
            # server wrote it): remove the row too, so no row outlives its files.
            self._discard(study.id, row=row_tried)
            if is_no_space(error):
                log.error("no space left to keep study %s: %s", study.id, error)
                raise storage_full() from error
            raise

    def _discard(self, study_id: str, row: bool) -> None:
        """Remove a study that could not be completed: its row (when it may exist), then its
        files. Best effort: what fails is logged and left to the sweep."""
        if row:
            try:
                self._session_call(studies.delete_study, study_id)
            except Exception as exc:
                # Usually the database is down and the row was never committed; throttled,
                # since during an outage every upload ends here.
                self._withdraw_later(study_id)
                outage_log.warning(
                    "study %s: could not remove its row after a failed write (%s); if it "
                    "was committed, it is deleted once the database answers again",
                    study_id,
                    exc,
                )
        self._remove_files(study_id)

    def _remove_files(self, study_id: str) -> bool:
        """Remove a study's folder; a failure is logged and retried by every sweep."""
        if self.media.delete_study(study_id):
            with self._undeleted_lock:
                self._undeleted.discard(study_id)
            return True
        log.error("study %s: files remain after its row was removed; the sweep retries", study_id)
        with self._undeleted_lock:
            self._undeleted.add(study_id)
        return False

    async def get_study(self, study_id: str, user_id: int | None) -> Study | None:
        return await self.call(studies.get_study, study_id, user_id, self.anonymous_cutoff())

    async def list_studies(
        self, user_id: int, page: int, per_page: int, finding: str | None
    ) -> tuple[list[Study], int]:
        return await self.call(studies.list_studies, user_id, page, per_page, finding)

    async def delete_study(self, study_id: str) -> bool:
        """The row, then its files; False when another request deleted it first."""
        if not await self.call(studies.delete_study, study_id):
            return False
        await self._thread(self._remove_files, study_id)
        return True

    async def delete_account(self, user_id: int) -> list[str]:
        """The user, their tokens and studies, then the files of exactly the studies that
        the deletion removed (see accounts.delete_user); the ids of those studies."""
        ids = await self.call(accounts.delete_user, user_id)
        for study_id in ids:
            await self._thread(self._remove_files, study_id)
        return ids

    async def read_file(self, study_id: str, name: str) -> bytes | None:
        return await self._thread(self.media.read, study_id, name)

    async def write_file(self, study_id: str, name: str, data: bytes) -> bool:
        """Add a file to a stored study (a heatmap drawn on demand). False, with nothing
        left behind, when the study was deleted meanwhile: the file goes only into a folder
        that exists, and is removed with the folder when the row is gone once it is there."""
        return await self._thread(self._write_file, study_id, name, data)

    def _write_file(self, study_id: str, name: str, data: bytes) -> bool:
        try:
            self.media.write(study_id, name, data)
        except (FileNotFoundError, NotADirectoryError):
            return False  # the folder is gone: the study was deleted
        except OSError as error:
            if is_no_space(error):
                raise storage_full() from error
            raise
        # The deletion removes the row, then the folder. If the row is still there now, a
        # later deletion removes this file with the folder; if it is gone, the deleter may
        # have emptied the folder before this file arrived, so remove it here.
        if self._session_call(studies.exists, study_id):
            return True
        self._remove_files(study_id)
        return False

    # -- the sweep -------------------------------------------------------------------------

    async def sweep(self, full: bool) -> SweepReport:
        """Delete expired anonymous studies and retry failed folder removals; with `full`
        (at start-up) also repair what a crash may have left (see `_sweep_leftovers`)."""
        return await self._thread(self._sweep, full)

    def _sweep(self, full: bool) -> SweepReport:
        report = SweepReport()
        while ids := self._session_call(studies.delete_expired, self.anonymous_cutoff(), BATCH):
            report.expired += len(ids)
            for study_id in ids:
                self._remove_files(study_id)
        report.withdrawn = self._retry_withdrawals()
        with self._undeleted_lock:
            pending, self._undeleted = self._undeleted, set()
        for batch in _batched(sorted(pending), BATCH):
            alive = self._session_call(studies.existing_ids, batch)
            report.retried += sum(self._remove_files(i) for i in batch if i not in alive)
        if self.media.in_database:
            pass  # row and files are one transaction: a crash leaves nothing to repair
        elif full:
            self._suspects = self._sweep_leftovers(report, None)
        elif self._suspects:
            self._suspects = self._sweep_leftovers(report, self._suspects)
        return report

    def _sweep_leftovers(self, report: SweepReport, only: set[str] | None) -> set[str]:
        """Repair what a crash (SIGKILL, power loss) between the steps of a write or a
        deletion leaves: folders without a row, temporary files of interrupted writes, rows
        without their image file. `only`: look at these studies alone (the suspects of the
        last full sweep), not at everything. Returns the suspects: what was too young to
        judge, judged again by the next sweeps until it is old enough.

        Folders and temporary files younger than `orphan_grace` are left alone: with
        several replicas sharing the database and the media folder, one may be filling
        that folder right now (files first, then the row). So what a kill left a moment
        before a restart is removed by a sweep once the grace has passed, not at once.

        A row whose image file is missing is marked (`files_missing_since`) and thereby
        hidden, not deleted: the same sight (rows without files) is what a replica sees when
        the shared media volume is not mounted or is the wrong one, and deleting there would
        destroy every study in the database. The mark is reversible: a later full sweep
        that finds the image again clears it. Rows younger than the grace are not judged
        either (a shared file system may show another replica's new file late)."""
        media = self.media
        assert isinstance(media, MediaStore)
        grace_s = self.orphan_grace.total_seconds()
        suspects: set[str] = set()
        folders = media.study_folders() if only is None else sorted(only)
        for batch in _batched(folders, BATCH):
            alive = self._session_call(studies.existing_ids, batch)
            for study_id in batch:
                if study_id in alive:
                    removed, left = media.remove_stale_temporaries(study_id, grace_s)
                    report.temporaries += removed
                    if left:
                        suspects.add(study_id)
                elif not media.folder(study_id).is_dir():
                    continue
                elif media.age(study_id) < grace_s:
                    suspects.add(study_id)
                elif media.delete_study(study_id):
                    report.orphan_folders += 1
        after, judged_before = "", utcnow() - self.orphan_grace
        while page := self._session_call(studies.page_of_rows, after, BATCH, only):
            missing, back = [], []
            for study_id, marked, created_at in page:
                present = media.exists(study_id, IMAGE_FILE)
                if present and marked:
                    back.append(study_id)
                elif not present and not marked:
                    if created_at >= judged_before:
                        suspects.add(study_id)
                    else:
                        missing.append(study_id)
            if missing:
                self._session_call(studies.mark_missing, missing, True)
                log.error(
                    "%d stored studies have no image file; they are hidden (marked "
                    "files_missing_since), e.g. %s: is the media folder the right one?",
                    len(missing),
                    missing[0],
                )
            if back:
                self._session_call(studies.mark_missing, back, False)
            report.marked_missing += len(missing)
            report.found_again += len(back)
            after = page[-1][0]
        return suspects
