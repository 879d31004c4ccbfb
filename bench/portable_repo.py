"""Carry a model repository to a machine that cannot build one (no TensorFlow, no network)
in a few megabytes: its graphs without their large weights, redrawn there.

    python bench/portable_repo.py pack models_onnx repo.tar.xz
    python bench/portable_repo.py unpack repo.tar.xz models_onnx     # on the other machine

The benchmarks' models are random-initialised (`weights=None`), so a tensor's exact values
carry no meaning there; its shape, dtype and scale do (speed, and the numeric range that an
fp16 graph must hold). `pack` keeps every graph's structure and its small tensors exactly,
and for each large float tensor records shape, dtype, mean and standard deviation, and a
key: the hash of its fp32 values. `unpack` draws each from a uniform distribution with
that mean and deviation, seeded by the key, so a tensor shared by a member's own graph and
the fused graph is drawn the same in both, and the fp16 graph holds the fp16 rounding of
the fp32 graph's draws. The manifest gets the new files' hashes and version; the
precision checks recorded for the old weights and the int8 graph (calibrated on them) are
dropped, and `redrawn.json` beside it says what was done, so reports can say so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import msgspec
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.files import write_atomic  # noqa: E402
from server.runtime.manifest import (  # noqa: E402
    MANIFEST_NAME,
    encode_manifest,
    load_manifest,
    model_version,
    sha256_file,
)
from server.runtime.repository import repository_files  # noqa: E402

MIN_REDRAWN_BYTES = 64 * 1024  # smaller tensors (biases, norms, shapes) travel as they are
RECORDS = "redraw.json"
MARKER = "redrawn.json"
FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def _key(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


def _strip(model: onnx.ModelProto, twins: dict[str, dict], min_bytes: int) -> list[dict]:
    """Empty the large float initializers of `model` in place; their records."""
    records = []
    for tensor in model.graph.initializer:
        if tensor.data_type not in FLOATS:
            continue
        values = numpy_helper.to_array(tensor)
        if values.nbytes < min_bytes:
            continue
        as32 = values.astype(np.float32)
        record = {
            "name": tensor.name,
            "dtype": np.dtype(FLOATS[tensor.data_type]).name,
            "shape": list(values.shape),
            "mean": float(as32.mean(dtype=np.float64)),
            "std": float(as32.std(dtype=np.float64)),
            "key": _key(as32),
        }
        twin = twins.get(tensor.name)
        if twin is not None and twin["shape"] == record["shape"]:
            # an fp16 tensor is drawn as its fp32 twin, then rounded
            record.update(key=twin["key"], mean=twin["mean"], std=twin["std"])
        records.append(record)
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.ClearField("int32_data")
    return records


def pack(repo: Path, out: Path, min_bytes: int = MIN_REDRAWN_BYTES) -> dict:
    manifest = load_manifest(repo)
    records: dict[str, list[dict]] = {}
    twins: dict[str, dict] = {}
    fp16 = manifest.fused_fp16 and manifest.fused_fp16.file
    int8 = manifest.fused_int8 and manifest.fused_int8.file  # calibrated on the old weights
    with tarfile.open(out, "w:xz") as tar:
        # the fp32 graphs come first: the fp16 graph's tensors are drawn as their twins
        for rel, _ in repository_files(manifest):
            if rel == int8:
                continue
            model = onnx.load(str(repo / rel))
            found = _strip(model, twins if rel == fp16 else {}, min_bytes)
            if rel == manifest.fused.file:
                twins = {r["name"]: r for r in found}
            records[rel] = found
            _add(tar, rel, model.SerializeToString())
        stripped = msgspec.structs.replace(manifest, fused_int8=None, precision_checks={})
        _add(tar, MANIFEST_NAME, encode_manifest(stripped))
        _add(tar, RECORDS, json.dumps({"version": manifest.version, "files": records}).encode())
    tensors = sum(len(r) for r in records.values())
    return {"archive": str(out), "bytes": out.stat().st_size, "redrawn_tensors": tensors}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def draw(record: dict) -> np.ndarray:
    """The record's tensor: uniform with its mean and deviation, seeded by its key."""
    rng = np.random.default_rng(int(record["key"][:16], 16))
    half = record["std"] * 3**0.5
    values = rng.uniform(-half, half, size=record["shape"]).astype(np.float32) + np.float32(
        record["mean"]
    )
    return values.astype(record["dtype"])


def unpack(archive: Path, dest: Path) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chexray-unpack-") as tmp:
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(tmp, filter="data")
        src = Path(tmp)
        records = json.loads((src / RECORDS).read_text())
        for rel, found in records["files"].items():
            model = onnx.load(str(src / rel))
            by_name = {r["name"]: r for r in found}
            for tensor in model.graph.initializer:
                if (record := by_name.get(tensor.name)) is not None:
                    tensor.CopyFrom(numpy_helper.from_array(draw(record), tensor.name))
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            onnx.save(model, str(dest / rel))
        manifest = load_manifest(src)

    def rehash(entry):
        path = dest / entry.file
        changes = {"sha256": sha256_file(path)}
        if hasattr(entry, "size_bytes"):
            changes["size_bytes"] = path.stat().st_size
        return msgspec.structs.replace(entry, **changes)

    fused = rehash(manifest.fused)
    fp16 = rehash(manifest.fused_fp16) if manifest.fused_fp16 is not None else None
    cam = rehash(manifest.cam)
    manifest = msgspec.structs.replace(
        manifest,
        members=[rehash(m) for m in manifest.members],
        cam=cam,
        fused=fused,
        fused_fp16=fp16,
        version=model_version(manifest.preset, fused, fp16, manifest.thresholds, cam.class_map),
    )
    write_atomic(dest / MANIFEST_NAME, encode_manifest(manifest))
    marker = {
        "from_version": records["version"],
        "version": manifest.version,
        "redrawn_tensors": sum(len(r) for r in records["files"].values()),
        "unpacked": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "note": "graphs as built; large weights redrawn with each tensor's shape, dtype, "
        "mean and deviation (bench/portable_repo.py): speed as the original, outputs not",
    }
    (dest / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return marker


def redrawn(repo: Path) -> dict | None:
    """The marker `unpack` leaves, or None for a repository built by `chexray convert`."""
    path = Path(repo) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="a repository's graphs, large weights left out")
    a.add_argument("repo", type=Path)
    a.add_argument("archive", type=Path)
    b = sub.add_parser("unpack", help="a repository from `pack`, large weights redrawn")
    b.add_argument("archive", type=Path)
    b.add_argument("dest", type=Path)
    args = p.parse_args(argv)
    if args.command == "pack":
        print(json.dumps(pack(args.repo, args.archive)))
    else:
        print(json.dumps(unpack(args.archive, args.dest)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
