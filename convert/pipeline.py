"""Builds a model repository: members, CAM network, fused graph, fp16 variant, manifest.

Idempotent: each file carries a build key (hash of its inputs: spec, source file, tool
versions); a rebuild reuses every file whose key and checksum still match.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

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
    LEGACY_WEIGHTS,
    MemberSpec,
    Preset,
    get_preset,
)
from convert.sources import Source, find_sources
from server.files import write_atomic
from server.runtime.contract import FP16_TOLERANCE
from server.runtime.manifest import (
    FINDINGS,
    MANIFEST_NAME,
    CamNetwork,
    GraphFile,
    Manifest,
    Member,
    Thresholds,
    graph_file,
    normalise_weights,
    sha256_file,
)
from server.runtime.precision import check_all
from server.runtime.repository import current_manifest, install_manifest, new_manifest
from server.settings import Settings

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


def _source_digest_path(path: Path | None) -> str:
    return sha256_file(path) if path is not None else "random"


def _fresh(out: Path, rel: str, old_sha: str | None) -> bool:
    return old_sha is not None and (out / rel).is_file() and sha256_file(out / rel) == old_sha


def _weights_matrix(names: list[str], path: Path | None) -> list[list[float]]:
    """Members x findings; from a JSON file {"member": [5 weights], ...} or the legacy
    application's."""
    table = LEGACY_WEIGHTS
    if path is not None:
        try:
            table = msgspec.json.decode(Path(path).read_bytes(), type=dict[str, list[float]])
        except (OSError, msgspec.DecodeError) as exc:
            raise ConversionError(
                f"{path}: not a JSON object of member -> 5 weights ({exc})"
            ) from None
    missing = [n for n in names if n not in table]
    if missing:
        raise ConversionError(f"weights matrix {path or '(legacy)'} has no row for {missing}")
    matrix = [table[n] for n in names]
    try:
        normalise_weights(matrix)
    except ValueError as exc:
        raise ConversionError(f"weights matrix {path or '(legacy)'}: {exc}") from None
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
    """Build the model repository `out` for a preset, reusing every file still up to date;
    installs and returns the new manifest, or returns the current one unchanged."""
    started = time.perf_counter()
    try:
        preset = _customised(get_preset(preset_name), member_sizes or {}, member_orders or {})
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    names = [m.name for m in preset.members]
    matrix = _weights_matrix(names, weights_matrix)
    sources = _member_sources(weights_dir, names, loader, log)
    checkpoint = _cam_checkpoint(cam_checkpoint)
    old = current_manifest(out)
    b = _Build(
        preset=preset,
        out=out,
        old=old if old is not None and old.preset == preset.name else None,
        versions=_versions(),
        steps=len(preset.members) + 2 + int(fp16),
        log=log,
        started=started,
    )
    log(f"Building the '{preset.name}' model repository in {out} ({b.steps} steps)")
    members = _members(b, sources)
    cam = _cam_network(b, checkpoint)
    normalised = normalise_weights(matrix)
    fused = _fused_graph(b, members, cam, normalised)
    fused16 = _fp16_graph(b, fused) if fp16 else None
    manifest = _install(b, members, cam, matrix, fused, fused16)
    return _precision_checks(b, manifest)


class _Entry(Protocol):
    """What the manifest records of each file it names."""

    @property
    def file(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def build_key(self) -> str: ...


E = TypeVar("E", bound=_Entry)


@dataclass(frozen=True)
class _Wanted(Generic[E]):
    """A file the repository needs: what the log calls it, its build key, and the previous
    manifest's entry for it (None when there is none)."""

    title: str
    key: str
    previous: E | None


@dataclass
class _Build:
    """One run of `convert_repository`: what it builds, where, what it may reuse, its log."""

    preset: Preset
    out: Path
    old: Manifest | None  # the current manifest, when it was built from the same preset
    versions: dict[str, str]
    steps: int
    log: Log
    started: float
    step: int = 0

    def reuse_or_build(
        self,
        wanted: list[_Wanted[E]],
        doing: str,
        build: Callable[[list[int]], list[E]],
        done: Callable[[E, float], str] | None = None,
    ) -> list[E]:
        """The entries of `wanted`, in order, one numbered step each. A previous entry whose
        build key matches and whose file still has its checksum is reused ("up to date");
        the others ("doing") are built by one call of `build`, given their indices and
        returning their new entries; `done(entry, seconds)` then describes each one."""
        entries: list[E | None] = []
        stale: list[int] = []
        for i, w in enumerate(wanted):
            self.step += 1
            prev = w.previous
            if prev and prev.build_key == w.key and _fresh(self.out, prev.file, prev.sha256):
                self.log(f"[{self.step}/{self.steps}] {w.title}: up to date")
                entries.append(prev)
            else:
                self.log(f"[{self.step}/{self.steps}] {w.title}: {doing}")
                entries.append(None)
                stale.append(i)
        if stale:
            t = time.perf_counter()
            built = build(stale)
            seconds = time.perf_counter() - t
            for i, entry in zip(stale, built, strict=True):
                entries[i] = entry
                if done is not None:
                    self.log(f"      {done(entry, seconds)}")
        return [e for e in entries if e is not None]  # none is left: the zip is strict

    def reuse_or_build_one(
        self,
        wanted: _Wanted[E],
        doing: str,
        build: Callable[[], E],
        done: Callable[[E, float], str] | None = None,
    ) -> E:
        (entry,) = self.reuse_or_build([wanted], doing, lambda _: [build()], done)
        return entry


def _member_sources(
    weights_dir: Path | None, names: list[str], loader: str, log: Log
) -> dict[str, Source]:
    if weights_dir is None:
        return {}
    sources, warnings = find_sources(Path(weights_dir), names, loader)
    for w in warnings:
        log(f"warning: {w}")
    return sources


def _cam_checkpoint(path: Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file")
    return path


def _members(b: _Build, sources: dict[str, Source]) -> list[Member]:
    """The five Keras members, the stale ones converted in child processes (see `_jobs`)."""
    specs = b.preset.members
    old = {m.name: m for m in b.old.members} if b.old else {}
    wanted = []
    for spec in specs:
        src = sources.get(spec.name)
        key = _key(
            spec,
            src and src.loader,
            _source_digest(src),
            OPSET,
            EXPORT_REVISION,
            b.versions.get("tf2onnx"),
            b.versions.get("tensorflow-cpu"),
        )
        what = f"{spec.architecture} {spec.input_size[0]}x{spec.input_size[1]}, " + (
            f"{src.kind} via {src.loader}: {src.path}" if src else "random init (untrained)"
        )
        wanted.append(_Wanted(f"{spec.name} ({what})", key, old.get(spec.name)))

    def convert(stale: list[int]) -> list[Member]:
        todo = [specs[i] for i in stale]
        results: dict[str, KerasResult] = {}
        for batch in _jobs(b.preset, todo, sources, b.out):
            job = KerasJob(
                loader=batch[0].source.loader if batch[0].source else "keras3",
                items=batch,
            )
            env = {"TF_USE_LEGACY_KERAS": "1"} if job.loader == "tf_keras" else {}
            for r in run_job("convert.keras_job", job, list[KerasResult], env):
                results[r.name] = r
        return [
            _member(b.out, spec, sources.get(spec.name), results[spec.name], wanted[i].key)
            for i, spec in zip(stale, todo, strict=True)
        ]

    return b.reuse_or_build(wanted, "converting", convert)


def _member(out: Path, spec: MemberSpec, src: Source | None, r: KerasResult, key: str) -> Member:
    rel = f"parts/{spec.name}.onnx"
    return Member(
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
        build_key=key,
    )


def _cam_network(b: _Build, checkpoint: Path | None) -> CamNetwork:
    """The CAM network, converted from torch in a child process."""
    cs = b.preset.cam
    key = _key(cs, _source_digest_path(checkpoint), OPSET, b.versions.get("torch"))
    what = f"{cs.architecture} {cs.input_size[0]}x{cs.input_size[1]}, " + (
        f"checkpoint {checkpoint}" if checkpoint else "random init (untrained)"
    )
    rel = f"parts/{cs.name}.onnx"
    source = str(checkpoint) if checkpoint else None

    def convert() -> CamNetwork:
        job = CamJob(cs, source, str(b.out / rel), b.preset.parity_samples)
        r = run_job("convert.cam_job", job, CamResult)
        return CamNetwork(
            name=cs.name,
            architecture=cs.architecture,
            input_size=cs.input_size,
            file=rel,
            sha256=sha256_file(b.out / rel),
            source=source,
            trained=checkpoint is not None,
            preprocess=cs.preprocess,
            classes=cs.classes,
            class_map=cs.class_map,
            feature_map=r.feature_map,
            parity=r.parity,
            build_key=key,
        )

    previous = b.old.cam if b.old else None
    return b.reuse_or_build_one(
        _Wanted(f"{cs.name} ({what})", key, previous), "converting", convert
    )


def _fused_graph(
    b: _Build, members: list[Member], cam: CamNetwork, weights: list[list[float]]
) -> GraphFile:
    """The members and the CAM network in one graph, with the normalised `weights`."""
    parts = [
        Part(m.name, b.out / m.file, m.input_size, m.preprocess, m.output_order) for m in members
    ]
    cam_part = Part(cam.name, b.out / cam.file, cam.input_size, cam.preprocess)
    size = b.preset.input_size
    key = _key(
        [m.sha256 for m in members],
        [m.preprocess for m in members],
        [m.output_order for m in members],
        cam.sha256,
        weights,
        size,
        b.versions.get("onnx"),
    )
    rel = "ensemble.onnx"

    def merge() -> GraphFile:
        _save(fuse(parts, cam_part, weights, size), b.out / rel)
        parity = fused_parity(b.out / rel, parts, cam_part, weights, size, b.preset.parity_samples)
        return graph_file(b.out, rel, "float32", parity, key)

    return b.reuse_or_build_one(
        _Wanted("fused graph", key, b.old.fused if b.old else None),
        f"merging {len(members)} members + CAM network",
        merge,
        lambda g, seconds: (
            f"fused in {seconds:.1f} s, parity {g.parity.max_abs_diff:.1e}, "
            f"{g.size_bytes / 1e6:.1f} MB"
        ),
    )


def _fp16_graph(b: _Build, fused: GraphFile) -> GraphFile:
    """The fused graph in float16, for GPUs."""
    rel = "ensemble.fp16.onnx"
    key = _key(fused.sha256, b.versions.get("onnxruntime"), b.versions.get("onnxruntime-gpu"))

    def convert() -> GraphFile:
        _save(to_fp16(onnx.load(str(b.out / fused.file))), b.out / rel)
        size = b.preset.input_size
        parity = fp16_parity(b.out / fused.file, b.out / rel, size, b.preset.parity_samples)
        return graph_file(b.out, rel, "float16", parity, key)

    return b.reuse_or_build_one(
        _Wanted("fp16 graph", key, b.old.fused_fp16 if b.old else None),
        "converting the fused graph to float16",
        convert,
        lambda g, seconds: (
            f"converted in {seconds:.1f} s, parity vs fp32 {g.parity.max_abs_diff:.1e} "
            f"(<= {FP16_TOLERANCE:.0e})"
        ),
    )


def _install(
    b: _Build,
    members: list[Member],
    cam: CamNetwork,
    weights: list[list[float]],
    fused: GraphFile,
    fused16: GraphFile | None,
) -> Manifest:
    """The manifest of what was built, installed unless the current one already says it."""
    thresholds = Thresholds(DEFAULT_THRESHOLDS, DEFAULT_THRESHOLDS_SOURCE)
    manifest = new_manifest(
        preset=b.preset.name,
        input_size=b.preset.input_size,
        members=members,
        cam=cam,
        weights=weights,
        thresholds=thresholds,
        fused=fused,
        fused_fp16=fused16,
        opset=OPSET,
        versions=b.versions,
    )
    version = manifest.version
    old = b.old
    if old is not None and old.version == version:
        b.log(f"Repository is up to date (version {version}).")
        return old
    if old is not None and old.calibration is not None:
        b.log(
            f"warning: this build replaces the calibrated weights and thresholds of version "
            f"{old.version}; `chexray models use {old.version}` serves them again"
        )
    install_manifest(b.out, manifest)
    elapsed = time.perf_counter() - b.started
    b.log(f"Wrote {b.out / MANIFEST_NAME}: version {version} in {elapsed:.1f} s")
    return manifest


def _precision_checks(b: _Build, manifest: Manifest) -> Manifest:
    """Compare every other backend and precision this machine can serve with fp32 and
    record the results, so that the server starts without checking them itself."""
    with tempfile.TemporaryDirectory(prefix="chexray-check-") as tmp:
        settings = Settings(model_dir=b.out, data_dir=Path(tmp), optimized_cache=False)
        t = time.perf_counter()
        checked = check_all(b.out, manifest, settings, only_missing=True)
    for label, check in checked.precision_checks.items():
        if label not in manifest.precision_checks:
            b.log(
                f"Precision {label}: {'passed' if check.passed else 'FAILED'} against fp32 "
                f"(max |diff| {max(check.max_abs_diff):.1e}, {check.calls_differ} call(s) "
                f"differ, {check.calls_differ_outside_margin} outside the margin)"
            )
    if checked is not manifest:
        b.log(f"Precision checks in {time.perf_counter() - t:.1f} s")
    return checked


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
