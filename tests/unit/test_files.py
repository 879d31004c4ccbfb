"""write_atomic: durable (the file's data, then the rename, reach the disk) and all or
nothing (a failed write leaves the old file and no temporary one)."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import pytest

from server.files import is_no_space, write_atomic


def test_the_file_is_synced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "image.png"
    write_atomic(target, b"data")
    assert target.read_bytes() == b"data"
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    synced_file, _, synced_dir = (path for _, path in events)
    assert Path(synced_file).name.startswith(".image.png."), "the temporary file's data"
    assert synced_dir == str(tmp_path), "the folder, so the rename is durable"


def test_a_write_past_the_file_size_limit_leaves_the_old_file_and_no_temporary(
    tmp_path: Path,
) -> None:
    target = tmp_path / "heatmap.png"
    target.write_bytes(b"old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError) as caught:
            write_atomic(target, b"x" * (1024 * 1024))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert caught.value.errno == errno.EFBIG and is_no_space(caught.value)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heatmap.png"]
