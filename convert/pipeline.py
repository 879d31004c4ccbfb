"""Builds a model repository: members, CAM network, fused graph, fp16 variant, the opt-in
int8 variant, manifest.

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
from convert.quantize import (
    INT8_FILE,
    Int8Request,
    calibration_images,
    evaluate_check,
    images_digest,
    int8_parity,
    labelled_images,
    quantize,
)
from convert.quantize import SETTINGS as INT8_SETTINGS
from convert.sources import Source, find_sources
from server.files import write_atomic
from server.runtime.backends import Machine, openvino_installed
from server.runtime.contract import FP16_TOLERANCE, PRECISION_TOLERANCE, check_contract
from server.runtime.manifest import (
    FINDINGS,
    MANIFEST_NAME,
    CamNetwork,
    GraphFile,
    Manifest,
    Member,
    PrecisionCheck,
    RepositoryError,
    Thresholds,
    graph_file,
    normalise_weights,
    sha256_file,
)
from server.runtime.precision import check_all, int8_choice, record
from server.runtime.repository import (
    current_manifest,
    install_manifest,
    new_manifest,
    verify_repository,
)
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
    int8: Int8Request | None = None,
    log: Log = _log,
) -> Manifest:
    """Build the model repository `out` for a preset, reusing every file still up to date;
    installs and returns the new manifest, or returns the current one unchanged.

    `int8` adds the int8 graph, calibrated on the user's images. Without it, an int8 graph
    built earlier is kept while the fused graph it came from is unchanged."""
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
        steps=len(preset.members) + 2 + int(fp16) + int(int8 is not None),
        log=log,
        started=started,
    )
    log(f"Building the '{preset.name}' model repository in {out} ({b.steps} steps)")
    members = _members(b, sources)
    cam = _cam_network(b, checkpoint)
    normalised = normalise_weights(matrix)
    fused = _fused_graph(b, members, cam, normalised)
    fused16 = _fp16_graph(b, fused) if fp16 else None
    if int8 is not None:
        fused8 = _int8_graph(b, fused, int8, preset.input_size)
    else:
        fused8 = _kept_int8(b, fused)
    manifest = _install(b, members, cam, matrix, fused, fused16, fused8)
    if int8 is not None and int8.labelled_csv is not None:
        manifest = _int8_evaluation(b, manifest, int8)
    return _precision_checks(b, manifest)


def add_int8(out: Path, request: Int8Request, log: Log = _log) -> Manifest:
    """The int8 step alone, on the repository `out` as it is (a calibrated one keeps its
    weights and thresholds): quantise its fused graph on the user's images, record the
    graph, check it; returns the installed manifest."""
    started = time.perf_counter()
    out = Path(out)
    try:
        old = verify_repository(out)
        size = check_contract(old)
        preset = get_preset(old.preset)
    except (RepositoryError, ValueError) as exc:
        raise ConversionError(str(exc)) from None
    b = _Build(preset, out, old, _versions(), steps=1, log=log, started=started)
    log(f"Adding an int8 graph to the model repository {out} (version {old.version})")
    fused8 = _int8_graph(b, old.fused, request, size)
    manifest = _with_int8(b, old, fused8)
    if request.labelled_csv is not None:
        manifest = _int8_evaluation(b, manifest, request)
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


def _int8_graph(
    b: _Build, fused: GraphFile, request: Int8Request, size: tuple[int, int]
) -> GraphFile:
    """The fused graph quantised to int8 (convert/quantize.py), calibrated on up to
    `request.images` of the user's X-rays; its parity is against fp32 on those images."""
    images = calibration_images(request.calibration, size, request.images)
    key = _key(
        fused.sha256,
        images_digest(images),
        INT8_SETTINGS,
        b.versions.get("onnx"),
        b.versions.get("onnxruntime"),
    )
    rel = Path(fused.file).with_suffix(".int8.onnx").as_posix()
    rel = INT8_FILE if fused.file == "ensemble.onnx" else rel
    openvino = openvino_installed()

    def build() -> GraphFile:
        quantize(b.out / fused.file, b.out / rel, images)
        parity = int8_parity(b.out / fused.file, b.out / rel, images, openvino)
        return graph_file(b.out, rel, "int8", parity, key)

    def done(g: GraphFile, seconds: float) -> str:
        within = "within" if g.parity.max_abs_diff <= PRECISION_TOLERANCE else "OUTSIDE"
        return (
            f"quantised in {seconds:.1f} s, {g.size_bytes / 1e6:.1f} MB, parity vs fp32 on "
            f"the calibration images {g.parity.max_abs_diff:.1e} ({within} "
            f"{PRECISION_TOLERANCE:.0e})"
        )

    previous = b.old.fused_int8 if b.old else None
    return b.reuse_or_build_one(
        _Wanted(
            f"int8 graph ({len(images)} calibration images from {request.calibration})",
            key,
            previous,
        ),
        "quantising the fused graph (static, calibrated on your images)",
        build,
        done,
    )


def _kept_int8(b: _Build, fused: GraphFile) -> GraphFile | None:
    """The int8 graph built earlier, while it is still of this fused graph."""
    old = b.old
    if old is None or old.fused_int8 is None:
        return None
    previous = old.fused_int8
    if old.fused.sha256 == fused.sha256 and _fresh(b.out, previous.file, previous.sha256):
        return previous
    b.log(
        "warning: the int8 graph was of the previous fused graph and is no longer served: "
        "rebuild it with --int8-calibration DIR"
    )
    return None


def _is_int8(label: str) -> bool:
    return label.endswith("-int8")


def _with_int8(b: _Build, old: Manifest, fused8: GraphFile | None) -> Manifest:
    """`old` with this int8 graph, installed if it changed; a rebuilt graph's earlier
    precision check no longer applies and is dropped (the checks that follow redo it)."""
    if old.fused_int8 == fused8:
        return old
    checks = {k: v for k, v in old.precision_checks.items() if not _is_int8(k)}
    manifest = msgspec.structs.replace(old, fused_int8=fused8, precision_checks=checks)
    install_manifest(b.out, manifest)
    what = "removed" if fused8 is None else f"{fused8.file} recorded"
    b.log(f"Wrote {b.out / MANIFEST_NAME}: int8 graph {what} (version {old.version})")
    return manifest


def _int8_evaluation(b: _Build, manifest: Manifest, request: Int8Request) -> Manifest:
    """The int8 gate on the user's labelled set: AUC per finding against fp32's, recorded
    as int8's precision check (replacing a parity-only one)."""
    assert request.labelled_csv is not None
    openvino = openvino_installed()
    label = int8_choice(Machine(cuda=False, openvino=openvino, bf16=False)).label
    previous = manifest.precision_checks.get(label)
    if previous is not None and previous.auc_set == str(request.labelled_csv):
        b.log(f"Precision {label} on {previous.auc_set}: up to date")
        return manifest
    t = time.perf_counter()
    labelled = labelled_images(
        request.labelled_csv, request.labelled_images, check_contract(manifest)
    )
    check = evaluate_check(b.out, manifest, labelled, openvino)
    b.log(_auc_line(check, labelled.unreadable, time.perf_counter() - t))
    return record(b.out, manifest, [check])


def _auc_line(check: PrecisionCheck, unreadable: int, seconds: float) -> str:
    drops = ", ".join(
        f"{f} {'n/a' if d is None else f'{d:+.4f}'}"
        for f, d in zip(FINDINGS, check.auc_drop or [], strict=True)
    )
    skipped = f", {unreadable} unreadable left out" if unreadable else ""
    return (
        f"Precision {check.label}: {'passed' if check.passed else 'FAILED'} on "
        f"{check.images} labelled images{skipped} in {seconds:.1f} s: AUC drop vs fp32 "
        f"(limit {check.auc_limit}) {drops}"
    )


def _install(
    b: _Build,
    members: list[Member],
    cam: CamNetwork,
    weights: list[list[float]],
    fused: GraphFile,
    fused16: GraphFile | None,
    fused8: GraphFile | None = None,
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
        fused_int8=fused8,
    )
    version = manifest.version
    old = b.old
    if old is not None and old.version == version:
        if old.fused_int8 != fused8:  # the served graphs are the same: only int8 changed
            return _with_int8(b, old, fused8)
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
