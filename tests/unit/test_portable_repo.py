"""bench/portable_repo.py: a repository packed without its large weights and unpacked with
them redrawn is a repository the server accepts, with the same graphs, the same shapes and
scales, shared tensors drawn alike and the fp16 graph the rounding of the fp32 one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bench.portable_repo import MARKER, pack, redrawn, unpack
from server.runtime.manifest import load_manifest
from server.runtime.repository import verify_repository


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_pack_then_unpack_gives_a_repository_the_server_accepts(
    tiny_copy: Path, tmp_path: Path
) -> None:
    before = load_manifest(tiny_copy)
    archive = tmp_path / "repo.tar.xz"
    # the tiny graphs' tensors are small: redraw everything over 1 KB
    packed = pack(tiny_copy, archive, min_bytes=1024)
    assert packed["redrawn_tensors"] > 0
    assert archive.stat().st_size < sum(p.stat().st_size for p in tiny_copy.rglob("*.onnx"))

    dest = tmp_path / "unpacked"
    marker = unpack(archive, dest)
    manifest = verify_repository(dest)  # every hash in the manifest matches its file
    assert marker["from_version"] == before.version
    assert manifest.version == marker["version"] != before.version
    assert manifest.precision_checks == {} and manifest.fused_int8 is None
    assert redrawn(dest) == json.loads((dest / MARKER).read_text())
    assert redrawn(tiny_copy) is None

    old = _initializers(tiny_copy / before.fused.file)
    new = _initializers(dest / manifest.fused.file)
    assert old.keys() == new.keys()
    changed = [n for n in old if not np.array_equal(old[n], new[n])]
    assert changed and all(old[n].nbytes >= 1024 for n in changed)
    for name in old:
        assert new[name].shape == old[name].shape and new[name].dtype == old[name].dtype
    for name in changed:  # the same scale: mean and deviation kept
        a, b = old[name].astype(np.float64), new[name].astype(np.float64)
        assert abs(b.std() - a.std()) <= 0.1 * a.std() + 1e-6
        assert abs(b.mean() - a.mean()) <= 0.1 * a.std() + 1e-6

    # a member's tensor and its copy in the fused graph are drawn alike
    member = _initializers(dest / manifest.cam.file)
    shared = [v for v in member.values() if v.nbytes >= 1024]
    assert shared and all(any(np.array_equal(v, w) for w in new.values()) for v in shared)

    # the fp16 graph holds the fp16 rounding of the fp32 draws
    fp16 = _initializers(dest / manifest.fused_fp16.file)
    redrawn16 = [n for n, v in fp16.items() if v.dtype == np.float16 and n in changed]
    assert redrawn16
    for name in redrawn16:
        np.testing.assert_array_equal(fp16[name], new[name].astype(np.float16))

    # unpacking again gives the same files: the draws are seeded
    again = unpack(archive, tmp_path / "again")
    assert again["version"] == marker["version"]
