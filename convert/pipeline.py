"""Builds a model repository: members, CAM network, fused graph, fp16 variant, manifest.

Idempotent: each file carries a build key (hash of its inputs: spec, source file, tool
versions); a rebuild reuses every file whose key and checksum still match.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import onnx

from convert.cam_job import CamJob, CamResult
from convert.errors import ConversionError
from convert.fuse import Part, fp16_parity, fuse, fused_parity, to_fp16
from convert.jobs import run_job
from convert.keras_job import EXPORT_REVISION, OPSET, KerasItem, KerasJob, KerasResult
from convert.presets import (
    DEFAULT_THRESHOLDS,
    DEFAULT_THRESHOLDS_SOURCE,
    SEED_WEIGHTS,
    MemberSpec,
    Preset,
    get_preset,
)
from convert.sources import Source, find_sources
from server.files import write_atomic
from server.runtime.contract import FP16_TOLERANCE, input_spec, output_specs
from server.runtime.manifest import (
    FINDINGS,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    CamNetwork,
    Manifest,
    Member,
    Thresholds,
    graph_file,
    model_version,
    normalise_weights,
    sha256_file,
)
from server.runtime.repository import current_manifest, install_manifest

Log = Callable[[str], None]


def _log(message: str) -> None:
    print(message, flush=True)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in (
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "tf-keras",
        "tf2onnx",
        "torch",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def _key(*parts: object) -> str:
    return hashlib.sha256(msgspec.json.encode(list(parts))).hexdigest()


def _source_digest(src: Source | None) -> str:
    if src is None:
        return "random"
    digest = sha256_file(Path(src.path))
    if src.weights_path:
        digest += sha256_file(Path(src.weights_path))
    return digest


def _fresh(out: Path, rel: str, old_sha: str | None) -> bool:
    return old_sha is not None and (out / rel).is_file() and sha256_file(out / rel) == old_sha


def _weights_matrix(names: list[str], path: Path | None) -> list[list[float]]:
    """Members x findings; from a JSON file {"member": [5 weights], ...} or the seed's."""
    table = SEED_WEIGHTS
    if path is not None:
        try:
            table = msgspec.json.decode(Path(path).read_bytes(), type=dict[str, list[float]])
        except (OSError, msgspec.DecodeError) as exc:
            raise ConversionError(
                f"{path}: not a JSON object of member -> 5 weights ({exc})"
            ) from None
    missing = [n for n in names if n not in table]
    if missing:
        raise ConversionError(f"weights matrix {path or '(seed)'} has no row for {missing}")
    matrix = [table[n] for n in names]
    try:
        normalise_weights(matrix)
    except ValueError as exc:
        raise ConversionError(f"weights matrix {path or '(seed)'}: {exc}") from None
    return matrix


def _customised(
    preset: Preset,
    member_sizes: dict[str, tuple[int, int]],
    member_orders: dict[str, list[str]],
) -> Preset:
    names = {m.name for m in preset.members}
    for option, given in (("--member-size", member_sizes), ("--member-order", member_orders)):
        unknown = set(given) - names
        if unknown:
            raise ConversionError(f"{option} names unknown members {sorted(unknown)}")
    for name, order in member_orders.items():
        if sorted(order) != sorted(FINDINGS):
            raise ConversionError(
                f"--member-order {name}: {order} is not an order of the five findings "
                f"{list(FINDINGS)}"
            )
    members = [
        msgspec.structs.replace(
            m,
            input_size=member_sizes.get(m.name, m.input_size),
            output_order=member_orders.get(m.name, m.output_order),
        )
        for m in preset.members
    ]
    return msgspec.structs.replace(preset, members=members)


def convert_repository(
    preset_name: str,
    out: Path,
    weights_dir: Path | None = None,
    cam_checkpoint: Path | None = None,
    loader: str = "auto",
    weights_matrix: Path | None = None,
    member_sizes: dict[str, tuple[int, int]] | None = None,
    member_orders: dict[str, list[str]] | None = None,
    fp16: bool = True,
    log: Log = _log,
) -> Manifest:
    started = time.perf_counter()
    try:
        preset = _customised(get_preset(preset_name), member_sizes or {}, member_orders or {})
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    names = [m.name for m in preset.members]
    matrix = _weights_matrix(names, weights_matrix)

    sources: dict[str, Source] = {}
    if weights_dir is not None:
        sources, warnings = find_sources(Path(weights_dir), names, loader)
        for w in warnings:
            log(f"warning: {w}")
    cam_source = None
    if cam_checkpoint is not None:
        cam_source = Path(cam_checkpoint)
        if not cam_source.is_file():
            raise ConversionError(f"{cam_source}: no such checkpoint file")
    old = current_manifest(out)
    if old is not None and old.preset != preset.name:
        old = None
    versions = _versions()
    steps = len(preset.members) + 2 + int(fp16)
    log(f"Building the '{preset.name}' model repository in {out} ({steps} steps)")

    # 1. Members: reuse what is up to date, convert the rest in child processes.
    old_members = {m.name: m for m in old.members} if old else {}
    keys, todo = {}, []
    for i, spec in enumerate(preset.members, 1):
        src = sources.get(spec.name)
        keys[spec.name] = _key(
            spec,
            src and src.loader,
            _source_digest(src),
            OPSET,
            EXPORT_REVISION,
            versions.get("tf2onnx"),
            versions.get("tensorflow-cpu"),
        )
        prev = old_members.get(spec.name)
        what = f"{spec.architecture} {spec.input_size[0]}x{spec.input_size[1]}, " + (
            f"{src.kind} via {src.loader}: {src.path}" if src else "random init (untrained)"
        )
        if prev and prev.build_key == keys[spec.name] and _fresh(out, prev.file, prev.sha256):
            log(f"[{i}/{steps}] {spec.name} ({what}): up to date")
        else:
            log(f"[{i}/{steps}] {spec.name} ({what}): converting")
            todo.append(spec)
    results: dict[str, KerasResult] = {}
    for batch in _jobs(preset, todo, sources, out):
        job = KerasJob(
            loader=batch[0].source.loader if batch[0].source else "keras3",
            items=batch,
        )
        env = {"TF_USE_LEGACY_KERAS": "1"} if job.loader == "tf_keras" else {}
        for r in run_job("convert.keras_job", job, list[KerasResult], env):
            results[r.name] = r
    members = []
    for spec in preset.members:
        src = sources.get(spec.name)
        rel = f"parts/{spec.name}.onnx"
        if spec.name in results:
            r = results[spec.name]
            members.append(
                Member(
                    name=spec.name,
                    architecture=spec.architecture,
                    input_size=r.input_size,
                    file=rel,
                    sha256=sha256_file(out / rel),
                    source=src.path if src else None,
                    trained=src is not None,
                    loader=src.loader if src else "random",
                    preprocess=msgspec.structs.replace(spec.preprocess, channels=r.channels),
                    output_order=spec.output_order,
                    parity=r.parity,
                    build_key=keys[spec.name],
                )
            )
        else:
            members.append(old_members[spec.name])

    # 2. The CAM network.
    step = len(preset.members) + 1
    cs = preset.cam
    cam_key = _key(cs, _source_digest_path(cam_source), OPSET, versions.get("torch"))
    what = f"{cs.architecture} {cs.input_size[0]}x{cs.input_size[1]}, " + (
        f"checkpoint {cam_source}" if cam_source else "random init (untrained)"
    )
    cam_rel = f"parts/{cs.name}.onnx"
    if old and old.cam.build_key == cam_key and _fresh(out, old.cam.file, old.cam.sha256):
        log(f"[{step}/{steps}] {cs.name} ({what}): up to date")
        cam = old.cam
    else:
        log(f"[{step}/{steps}] {cs.name} ({what}): converting")
        job = CamJob(
            cs, str(cam_source) if cam_source else None, str(out / cam_rel), preset.parity_samples
        )
        r = run_job("convert.cam_job", job, CamResult)
        cam = CamNetwork(
            name=cs.name,
            architecture=cs.architecture,
            input_size=cs.input_size,
            file=cam_rel,
            sha256=sha256_file(out / cam_rel),
            source=str(cam_source) if cam_source else None,
            trained=cam_source is not None,
            preprocess=cs.preprocess,
            classes=cs.classes,
            class_map=cs.class_map,
            feature_map=r.feature_map,
            parity=r.parity,
            build_key=cam_key,
        )

    # 3. The fused graph.
    step += 1
    normalised = normalise_weights(matrix)
    parts = [
        Part(m.name, out / m.file, m.input_size, m.preprocess, m.output_order) for m in members
    ]
    cam_part = Part(cam.name, out / cam.file, cam.input_size, cam.preprocess)
    fused_key = _key(
        [m.sha256 for m in members],
        [m.preprocess for m in members],
        [m.output_order for m in members],
        cam.sha256,
        normalised,
        preset.input_size,
        versions.get("onnx"),
    )
    fused_rel = "ensemble.onnx"
    if old and old.fused.build_key == fused_key and _fresh(out, fused_rel, old.fused.sha256):
        log(f"[{step}/{steps}] fused graph: up to date")
        fused = old.fused
    else:
        log(f"[{step}/{steps}] fused graph: merging {len(members)} members + CAM network")
        t = time.perf_counter()
        model = fuse(parts, cam_part, normalised, preset.input_size)
        _save(model, out / fused_rel)
        parity = fused_parity(
            out / fused_rel, parts, cam_part, normalised, preset.input_size, preset.parity_samples
        )
        fused = graph_file(out, fused_rel, "float32", parity, fused_key)
        log(
            f"      fused in {time.perf_counter() - t:.1f} s, parity {parity.max_abs_diff:.1e}, "
            f"{fused.size_bytes / 1e6:.1f} MB"
        )

    # 4. fp16 variant for GPUs.
    fused16 = None
    if fp16:
        step += 1
        rel16 = "ensemble.fp16.onnx"
        key16 = _key(fused.sha256, versions.get("onnxruntime"), versions.get("onnxruntime-gpu"))
        if (
            old
            and old.fused_fp16
            and old.fused_fp16.build_key == key16
            and _fresh(out, rel16, old.fused_fp16.sha256)
        ):
            log(f"[{step}/{steps}] fp16 graph: up to date")
            fused16 = old.fused_fp16
        else:
            log(f"[{step}/{steps}] fp16 graph: converting the fused graph to float16")
            t = time.perf_counter()
            _save(to_fp16(onnx.load(str(out / fused_rel))), out / rel16)
            parity = fp16_parity(
                out / fused_rel, out / rel16, preset.input_size, preset.parity_samples
            )
            fused16 = graph_file(out, rel16, "float16", parity, key16)
            log(
                f"      converted in {time.perf_counter() - t:.1f} s, parity vs fp32 "
                f"{parity.max_abs_diff:.1e} (<= {FP16_TOLERANCE:.0e})"
            )

    thresholds = Thresholds(DEFAULT_THRESHOLDS, DEFAULT_THRESHOLDS_SOURCE)
    version = model_version(preset.name, fused, fused16, thresholds, cam.class_map)
    if old is not None and old.version == version:
        log(f"Repository is up to date (version {version}).")
        return old
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        preset=preset.name,
        version=version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        findings=list(FINDINGS),
        input=input_spec(*preset.input_size),
        outputs=output_specs(len(members), cam.feature_map[1:]),
        members=members,
        weights=matrix,
        weights_normalised=normalised,
        thresholds=thresholds,
        cam=cam,
        fused=fused,
        fused_fp16=fused16,
        opset=OPSET,
        versions=versions,
    )
    if old is not None and old.calibration is not None:
        log(
            f"warning: this build replaces the calibrated weights and thresholds of version "
            f"{old.version}; `chexray models use {old.version}` serves them again"
        )
    install_manifest(out, manifest)
    log(f"Wrote {out / MANIFEST_NAME}: version {version} in {time.perf_counter() - started:.1f} s")
    return manifest


def _source_digest_path(path: Path | None) -> str:
    return sha256_file(path) if path is not None else "random"


def _jobs(
    preset: Preset, todo: list[MemberSpec], sources: dict[str, Source], out: Path
) -> list[list[KerasItem]]:
    """One child per member for full-size models; else one per Keras loader."""
    items = [
        KerasItem(
            spec,
            sources.get(spec.name),
            str(out / "parts" / f"{spec.name}.onnx"),
            preset.parity_samples,
        )
        for spec in todo
    ]
    if preset.process_per_member:
        return [[i] for i in items]
    groups: dict[str, list[KerasItem]] = {}
    for item in items:
        groups.setdefault(item.source.loader if item.source else "keras3", []).append(item)
    return list(groups.values())


def _save(model: onnx.ModelProto, path: Path) -> None:
    write_atomic(path, model.SerializeToString())
