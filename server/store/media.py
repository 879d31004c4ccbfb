"""Files of studies on disk: <data>/media/<study id>/<name>.png.

Names are generated here, never taken from a client, and study ids are random tokens
checked against a strict pattern, so no request can reach outside the media folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from server.files import write_atomic

STUDY_ID = re.compile(r"^[A-Za-z0-9_-]{16,32}$")
FILE_NAME = re.compile(r"^(image|heatmap|heatmap-[a-z_]+)\.png$")


class MediaStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, study_id: str, name: str) -> Path:
        if not STUDY_ID.match(study_id) or not FILE_NAME.match(name):
            raise ValueError("invalid media name")
        return self.root / study_id / name

    def write(self, study_id: str, name: str, data: bytes) -> Path:
        """Atomic write: a reader never sees half a file."""
        path = self.path(study_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        return path

    def read(self, study_id: str, name: str) -> bytes | None:
        path = self.path(study_id, name)
        return path.read_bytes() if path.is_file() else None

    def delete_study(self, study_id: str) -> None:
        if STUDY_ID.match(study_id):
            shutil.rmtree(self.root / study_id, ignore_errors=True)
