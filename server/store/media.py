"""Files of studies on disk: <data>/media/<study id>/<name> (PNGs, a DICOM header).

Names are generated here, never taken from a client, and study ids are random tokens
checked against a strict pattern, so no request can reach outside the media folder.

A study's folder is created only by the write of a new study (`create=True`); every later
write (a heatmap drawn on demand) goes into the folder only if it still exists, so a write
racing the study's deletion cannot bring the folder back.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from server.files import TEMP_PREFIX, fsync_dir, write_atomic

STUDY_ID = re.compile(r"^[A-Za-z0-9_-]{16,32}$")
# A DICOM source's header (no pixels) is kept as source-header.dcm (service/dicom_results.py).
FILE_NAME = re.compile(r"^((image|heatmap|heatmap-[a-z_]+)\.png|source-header\.dcm)$")
# The one file a stored study cannot do without: heatmaps can be drawn again from it.
IMAGE_FILE = "image.png"

log = logging.getLogger("chexray.store")


class MediaStore:
    in_database = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def where(self) -> str:
        return f"in {self.root}"

    def folder(self, study_id: str) -> Path:
        if not STUDY_ID.match(study_id):
            raise ValueError("invalid study id")
        return self.root / study_id

    def path(self, study_id: str, name: str) -> Path:
        if not FILE_NAME.match(name):
            raise ValueError("invalid media name")
        return self.folder(study_id) / name

    def write(self, study_id: str, name: str, data: bytes, create: bool = False) -> Path:
        """Atomic, durable write. `create`: make the study's folder (a new study); otherwise
        FileNotFoundError when the folder is gone (the study was deleted)."""
        path = self.path(study_id, name)
        if create and not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)
        write_atomic(path, data)
        return path

    def read(self, study_id: str, name: str) -> bytes | None:
        path = self.path(study_id, name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, study_id: str, name: str) -> bool:
        return self.path(study_id, name).is_file()

    def delete_study(self, study_id: str) -> bool:
        """Remove the study's folder; True when it is gone. What could not be removed is
        logged (the caller decides what to do about it: see Store)."""
        if not STUDY_ID.match(study_id):
            return True
        folder = self.root / study_id
        failures: list[str] = []

        def failed(_fn, path, exc_info) -> None:
            exc = exc_info[1]
            if not isinstance(exc, FileNotFoundError):  # removed by someone else: fine
                failures.append(f"{path}: {exc}")

        shutil.rmtree(folder, onerror=failed)
        gone = not folder.exists()
        if failures or not gone:
            log.warning(
                "could not remove all the files of study %s: %s",
                study_id,
                "; ".join(failures) or "the folder is still there",
            )
        return gone

    # -- what the sweep looks at --------------------------------------------------------

    def study_folders(self) -> Iterator[str]:
        """The ids of the study folders present (anything else in the root is left alone)."""
        with os.scandir(self.root) as entries:
            for entry in entries:
                if STUDY_ID.match(entry.name) and entry.is_dir(follow_symlinks=False):
                    yield entry.name

    def age(self, study_id: str) -> float:
        """Seconds since the folder or anything in it last changed (a writer filling it
        keeps it young)."""
        folder = self.root / study_id
        newest = 0.0
        try:
            newest = folder.stat().st_mtime
            with os.scandir(folder) as entries:
                for entry in entries:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except FileNotFoundError:
            pass
        return time.time() - newest

    def remove_stale_temporaries(self, study_id: str, older_than: float) -> tuple[int, int]:
        """Delete the temporary files of interrupted writes (".<name>.<random>") older than
        `older_than` seconds; a fresh one may be a write in progress. (removed, left)."""
        removed = left = 0
        now = time.time()
        try:
            with os.scandir(self.root / study_id) as entries:
                for entry in entries:
                    if not entry.name.startswith(TEMP_PREFIX) or not entry.is_file():
                        continue
                    if now - entry.stat().st_mtime < older_than:
                        left += 1
                        continue
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except FileNotFoundError:
                        pass
        except FileNotFoundError:
            pass
        return removed, left
