"""Writing files so that a reader never sees half of one, and a crash never loses one that
was reported written."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

# What a write answers when the disk (or the process's file-size limit, or a quota) has no
# room left: not a bug, a condition the caller reports as such.
NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
TEMP_PREFIX = "."  # temporary files are ".<name>.<random>" beside their target


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (a rename, a new file or subfolder) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync it, rename it over `path`, then fsync
    the folder: after a crash `path` holds the old bytes or the new ones, never a prefix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
