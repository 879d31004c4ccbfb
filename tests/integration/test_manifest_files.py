"""The manifest of a built repository: round-trip, plain JSON, validation errors that name
the field."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from server.runtime.manifest import (
    FINDINGS,
    MANIFEST_NAME,
    RepositoryError,
    decode_manifest,
    encode_manifest,
    load_manifest,
)


def test_manifest_round_trip(tiny_repo: Path) -> None:
    manifest = load_manifest(tiny_repo)
    again = decode_manifest(encode_manifest(manifest))
    assert again == manifest
    assert list(again.findings) == list(FINDINGS)


def test_invalid_manifest_names_the_field(tiny_copy: Path) -> None:
    path = tiny_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    del data["members"][0]["sha256"]
    path.write_text(json.dumps(data))
    with pytest.raises(RepositoryError, match=r"sha256.*members\[0\]|members\[0\].*sha256"):
        load_manifest(tiny_copy)


def test_other_schema_version_is_refused(tiny_copy: Path) -> None:
    path = tiny_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(RepositoryError, match="schema version 99"):
        load_manifest(tiny_copy)


def test_truncated_manifest_is_refused(tiny_copy: Path) -> None:
    path = tiny_copy / MANIFEST_NAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RepositoryError, match="not valid JSON"):
        load_manifest(tiny_copy)


def test_manifest_is_plain_json(tiny_repo: Path) -> None:
    data = msgspec.json.decode((tiny_repo / MANIFEST_NAME).read_bytes())
    assert data["members"][0]["trained"] is False
    assert data["thresholds"]["values"] == [0.2412, 0.10835, 0.0535, 0.20655, 0.2101]
