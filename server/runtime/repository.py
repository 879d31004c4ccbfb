"""Makes, checks and installs a model repository's manifest, and describes it for people."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from server.files import write_atomic
from server.runtime.contract import input_spec, output_specs
from server.runtime.manifest import (
    FINDINGS,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    CamNetwork,
    GraphFile,
    Manifest,
    Member,
    RepositoryError,
    Thresholds,
    decode_manifest,
    encode_manifest,
    load_manifest,
    model_version,
    normalise_weights,
    sha256_file,
)


def new_manifest(
    *,
    preset: str,
    input_size: tuple[int, int],
    members: list[Member],
    cam: CamNetwork,
    weights: list[list[float]],
    thresholds: Thresholds,
    fused: GraphFile,
    fused_fp16: GraphFile | None,
    opset: int,
    versions: dict[str, str],
    fused_int8: GraphFile | None = None,
) -> Manifest:
    """The manifest of a freshly built repository: tensors from the contract, weights
    normalised per finding, version from what users get back."""
    return Manifest(
        schema_version=SCHEMA_VERSION,
        preset=preset,
        version=model_version(preset, fused, fused_fp16, thresholds, cam.class_map),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        findings=list(FINDINGS),
        input=input_spec(*input_size),
        outputs=output_specs(len(members), cam.feature_map[1:]),
        members=members,
        weights=weights,
        weights_normalised=normalise_weights(weights),
        thresholds=thresholds,
        cam=cam,
        fused=fused,
        fused_fp16=fused_fp16,
        opset=opset,
        versions=versions,
        fused_int8=fused_int8,
    )


def repository_files(manifest: Manifest) -> list[tuple[str, str]]:
    """Every (relative path, sha256) the manifest promises."""
    files = [(m.file, m.sha256) for m in manifest.members]
    files.append((manifest.cam.file, manifest.cam.sha256))
    files.append((manifest.fused.file, manifest.fused.sha256))
    for graph in (manifest.fused_fp16, manifest.fused_int8):
        if graph is not None:
            files.append((graph.file, graph.sha256))
    return files


def check_files(manifest: Manifest, directory: Path) -> None:
    """Raise RepositoryError unless every file the manifest names is present and intact."""
    problems = []
    for rel, expected in repository_files(manifest):
        path = Path(directory) / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif (actual := sha256_file(path)) != expected:
            problems.append(
                f"{path}: corrupted or replaced (sha256 {actual[:12]}…, manifest says "
                f"{expected[:12]}…)"
            )
    if problems:
        raise RepositoryError(
            "model repository is damaged:\n  "
            + "\n  ".join(problems)
            + "\nrebuild it with `chexray convert`"
        )


def verify_repository(directory: Path) -> Manifest:
    """Load the manifest and check that each file it names is present and intact."""
    manifest = load_manifest(Path(directory))
    check_files(manifest, directory)
    return manifest


# Every manifest that was ever served stays in versions/<version>.json, so that a
# calibration or a rebuild can be undone with `chexray models use VERSION`.
VERSIONS_DIR = "versions"


def _archive(directory: Path, manifest: Manifest) -> None:
    folder = Path(directory) / VERSIONS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{manifest.version}.json"
    if not path.exists():
        write_atomic(path, encode_manifest(manifest))


def current_manifest(directory: Path) -> Manifest | None:
    """The manifest in `directory`, or None when there is none (or it is unreadable)."""
    try:
        return load_manifest(Path(directory))
    except RepositoryError:
        return None


def install_manifest(directory: Path, manifest: Manifest) -> None:
    """Make `manifest` the served one; the one it replaces is archived first."""
    directory = Path(directory)
    current = current_manifest(directory)
    if current is not None:
        _archive(directory, current)
    _archive(directory, manifest)
    write_atomic(directory / MANIFEST_NAME, encode_manifest(manifest))


def archived_versions(directory: Path) -> list[Manifest]:
    """The archived manifests, oldest first (unreadable ones are skipped)."""
    found = []
    for path in (Path(directory) / VERSIONS_DIR).glob("*.json"):
        try:
            found.append(decode_manifest(path.read_bytes(), str(path)))
        except RepositoryError:
            continue
    return sorted(found, key=lambda m: m.created)


def installed_versions(directory: Path) -> list[str]:
    """Every version this repository can serve: the archived ones, oldest first, and the
    current manifest's."""
    versions = [m.version for m in archived_versions(directory)]
    current = current_manifest(directory)
    if current is not None and current.version not in versions:
        versions.append(current.version)
    return versions


class UnknownVersion(RepositoryError):
    """The repository has no manifest of this version."""


def load_version(directory: Path, version: str) -> Manifest:
    """The manifest of `version` (the current one or an archived one), its files checked;
    UnknownVersion when there is none, RepositoryError when its files are damaged."""
    current = current_manifest(directory)
    if current is not None and current.version == version:
        manifest = current
    else:
        path = Path(directory) / VERSIONS_DIR / f"{version}.json"
        if not path.is_file():
            known = [m.version for m in archived_versions(directory)]
            raise UnknownVersion(
                f"no archived version {version!r} in {path.parent}; known: {known}"
            )
        manifest = decode_manifest(path.read_bytes(), str(path))
    check_files(manifest, directory)
    return manifest


def use_version(directory: Path, version: str) -> Manifest:
    """Serve an archived version again (after a restart, or at once by asking a running
    server to activate it), if its files are all still there."""
    manifest = load_version(directory, version)
    install_manifest(directory, manifest)
    return manifest


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:7.1f} MB" if path.is_file() else "missing"


def describe(manifest: Manifest, directory: Path) -> str:
    """A plain-text summary: networks, sizes, parity, weights, thresholds, version."""
    directory = Path(directory)
    lines = [
        f"CheXray model repository {directory}",
        f"  version {manifest.version}  preset {manifest.preset}  created {manifest.created}",
        f"  input {manifest.input.name} {manifest.input.dtype}{manifest.input.shape}  "
        f"opset {manifest.opset}",
    ]
    if not manifest.trained:
        lines.append(
            "  UNTRAINED: some networks carry random weights; predictions are meaningless "
            "until trained weights are converted (chexray convert --weights DIR)."
        )
    lines.append("")
    lines.append(
        f"  {'network':<22}{'architecture':<20}{'input':>9}  {'trained':<8}{'size':>10}  parity"
    )
    for m in manifest.members:
        h, w = m.input_size
        lines.append(
            f"  {m.name:<22}{m.architecture:<20}{f'{h}x{w}':>9}  {'yes' if m.trained else 'NO':<8}"
            f"{_mb(directory / m.file):>10}  {m.parity.max_abs_diff:.1e} vs {m.parity.against}"
        )
    c = manifest.cam
    h, w = c.input_size
    lines.append(
        f"  {c.name:<22}{c.architecture:<20}{f'{h}x{w}':>9}  {'yes' if c.trained else 'NO':<8}"
        f"{_mb(directory / c.file):>10}  {c.parity.max_abs_diff:.1e} vs {c.parity.against}"
    )
    for g in (manifest.fused, manifest.fused_fp16, manifest.fused_int8):
        if g is None:
            continue
        lines.append(
            f"  {g.file:<22}{'fused ' + g.dtype:<20}{'':>9}  {'':<8}{_mb(directory / g.file):>10}"
            f"  {g.parity.max_abs_diff:.1e} vs {g.parity.against}"
        )
    lines.append("")
    lines.append(f"  {'':<28}" + "".join(f"{f:>17}" for f in FINDINGS))
    lines.append(
        f"  {'threshold':<28}" + "".join(f"{t:>17.4f}" for t in manifest.thresholds.values)
    )
    for m, row in zip(manifest.members, manifest.weights_normalised, strict=True):
        lines.append(f"  {'weight ' + m.name:<28}" + "".join(f"{w:>17.3f}" for w in row))
    lines.append(f"  thresholds: {manifest.thresholds.source}")
    if (c := manifest.calibration) is not None:
        lines.append(
            f"  calibrated {c.created} on {c.data} ({c.images} images, {c.folds}-fold CV), "
            f"previous version {c.previous_version}"
        )
    for p in manifest.precision_checks.values():
        lines.append(
            f"  precision {p.label}: {'passed' if p.passed else 'FAILED'} - max |diff| "
            f"{max(p.max_abs_diff):.1e} (<= {p.tolerance:.0e}), {p.calls_differ} call(s) "
            f"differ ({p.calls_differ_outside_margin} outside the margin) on {p.images} images"
            f" ({p.check_set}), {p.created[:10]}"
        )
    return "\n".join(lines)
