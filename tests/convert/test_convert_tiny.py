"""The converter on the tiny preset: every export checked against its framework and
recorded, idempotent rebuilds that redo only what changed, a damaged part rebuilt."""

from __future__ import annotations

import os
from pathlib import Path

from convert.pipeline import convert_repository
from server.runtime.manifest import load_manifest, normalise_weights


def test_every_export_is_checked_and_recorded(converted_repo: Path) -> None:
    m = load_manifest(converted_repo)
    assert m.preset == "tiny" and not m.trained
    for member in m.members:
        assert member.parity.against == "keras"
        assert member.parity.max_abs_diff <= 1e-5 and member.parity.samples > 0
        assert not member.trained and member.source is None and member.loader == "random"
    assert m.cam.parity.against == "torch" and m.cam.parity.max_abs_diff <= 1e-5
    assert m.fused.parity.max_abs_diff <= 1e-5
    assert m.fused_fp16 is not None and m.fused_fp16.parity.max_abs_diff <= 1e-2
    assert m.weights_normalised == normalise_weights(m.weights)
    assert m.cam.class_map == {
        "Atelectasis": 0,
        "Cardiomegaly": 1,
        "Consolidation": 8,
        "Edema": 9,
        "Pleural Effusion": 2,
    }


def test_rebuild_is_idempotent_and_only_redoes_what_changed(
    converted_copy: Path, tmp_path: Path
) -> None:
    before = load_manifest(converted_copy)
    mtimes = {p: p.stat().st_mtime_ns for p in converted_copy.rglob("*.onnx")}
    lines: list[str] = []
    again = convert_repository("tiny", converted_copy, log=lines.append)
    assert again == before
    assert {p: p.stat().st_mtime_ns for p in converted_copy.rglob("*.onnx")} == mtimes
    assert sum(line.startswith("[") and "up to date" in line for line in lines) == 8

    # New ensemble weights: the networks are reused, the fused graph and version change.
    matrix = tmp_path / "weights.json"
    matrix.write_text(
        '{"xception": [1,1,1,1,1], "inception_resnet_v2": [1,1,1,1,1], "densenet121": [1,1,1,1,1],'
        ' "densenet169": [1,1,1,1,1], "densenet201": [1,1,1,1,1]}'
    )
    lines.clear()
    equal = convert_repository("tiny", converted_copy, weights_matrix=matrix, log=lines.append)
    assert equal.version != before.version
    assert equal.members == before.members and equal.cam == before.cam
    assert equal.weights_normalised == [[0.2] * 5] * 5
    assert any(line.startswith("[7/8] fused graph: merging") for line in lines)


def test_a_corrupted_part_is_rebuilt(converted_copy: Path) -> None:
    m = load_manifest(converted_copy)
    part = converted_copy / m.members[0].file
    part.write_bytes(b"\0" * 100)
    lines: list[str] = []
    again = convert_repository("tiny", converted_copy, log=lines.append)
    assert any(line.startswith("[1/8] xception") and "converting" in line for line in lines)
    assert again.members[0].sha256 == m.members[0].sha256, "random init is reproducible"
    assert os.path.getsize(part) > 100
