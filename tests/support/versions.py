"""Other model versions of a repository, archived beside the served one as `chexray
calibrate` leaves them (versions/<version>.json), without installing them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec

from server.runtime.manifest import Thresholds, encode_manifest, load_manifest, model_version
from server.runtime.repository import VERSIONS_DIR, install_manifest

# Every call present in one version, absent in the other: answers tell them apart.
LOW = [0.0] * 5
HIGH = [1.0] * 5


def archive_version(repo: Path, thresholds: list[float], broken: bool = False) -> str:
    """A version of `repo`'s model with other thresholds, archived (not served); `broken`:
    its manifest promises a fused graph whose checksum no file has. Its version."""
    current = load_manifest(repo)
    install_manifest(repo, current)  # the served one is archived too, as calibrate leaves it
    fused = current.fused
    if broken:
        fused = msgspec.structs.replace(fused, sha256="0" * 64)
    th = Thresholds(thresholds, "other thresholds, for a test")
    manifest = msgspec.structs.replace(
        current,
        version=model_version(current.preset, fused, current.fused_fp16, th, current.cam.class_map),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        thresholds=th,
        fused=fused,
    )
    (repo / VERSIONS_DIR).mkdir(exist_ok=True)
    (repo / VERSIONS_DIR / f"{manifest.version}.json").write_bytes(encode_manifest(manifest))
    return manifest.version
