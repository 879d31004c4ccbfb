"""The one store object: the database and the media files of studies, behind async methods
that run their blocking work in worker threads, so callers never touch either directly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from server.store import studies
from server.store.db import Database
from server.store.media import MediaStore
from server.store.models import Study

T = TypeVar("T")


class Store:
    def __init__(self, database_url: str, media_dir: Path) -> None:
        self.db = Database(database_url)
        self.media = MediaStore(media_dir)

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
        return f"database {self.db.safe_url}, media in {self.media.root}"

    # -- running work ----------------------------------------------------------------------

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(fn, *args)

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(session, *args)` (a function of server/store) in a worker thread, in a
        session of its own."""

        def work() -> T:
            with self.db.session() as s:
                return fn(s, *args)

        return await self._thread(work)

    # -- studies ---------------------------------------------------------------------------

    async def add_study(self, study: Study, files: dict[str, bytes]) -> Study:
        """Write the study's files, then its row; no files stay behind if the row fails."""
        try:
            for name, data in files.items():
                await self._thread(self.media.write, study.id, name, data)
            return await self.call(studies.add_study, study)
        except BaseException:
            await self._thread(self.media.delete_study, study.id)
            raise

    async def get_study(self, study_id: str, user_id: int | None) -> Study | None:
        return await self.call(studies.get_study, study_id, user_id)

    async def list_studies(
        self, user_id: int, page: int, per_page: int, finding: str | None
    ) -> tuple[list[Study], int]:
        return await self.call(studies.list_studies, user_id, page, per_page, finding)

    async def delete_study(self, study_id: str) -> bool:
        """The row, then its files; False when another request deleted it first."""
        if not await self.call(studies.delete_study, study_id):
            return False
        await self._thread(self.media.delete_study, study_id)
        return True

    async def delete_media(self, study_ids: list[str]) -> None:
        for study_id in study_ids:
            await self._thread(self.media.delete_study, study_id)

    async def read_file(self, study_id: str, name: str) -> bytes | None:
        return await self._thread(self.media.read, study_id, name)

    async def write_file(self, study_id: str, name: str, data: bytes) -> None:
        await self._thread(self.media.write, study_id, name, data)
