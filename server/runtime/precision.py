"""Precision is a checked property: a backend and precision other than onnxruntime fp32
serves only after its answers were compared with fp32's on a fixed check set and passed
the gate (server/runtime/contract.py: PRECISION_TOLERANCE, CALL_MARGIN). The record goes
into the manifest (`precision_checks`), written by `chexray convert` and
`chexray models check-precision`; a server that finds none runs the check at start."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from server.errors import ChexrayError
from server.runtime import contract
from server.runtime.backends import REFERENCE, Choice, Machine, open_backend
from server.runtime.checkset import check_set
from server.runtime.decode import decode
from server.runtime.manifest import Manifest, PrecisionCheck
from server.runtime.preprocess import resize_for_model
from server.runtime.repository import install_manifest
from server.runtime.session import cpu_signature

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger("chexray.runtime")

CHECK_IMAGES = 16


def machine_name() -> str:
    return cpu_signature().split("|")[1] or "unknown CPU"


def check_images(manifest: Manifest, extra: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """The generated check set at model resolution, plus `extra` images (uint8 [N, H, W],
    e.g. the user's own labelled images); and a description for the record."""
    h, w = contract.check_contract(manifest)
    images = check_set(h, w, CHECK_IMAGES)
    what = f"{CHECK_IMAGES} generated X-ray-like images"
    if extra is not None and len(extra):
        images = np.concatenate([images, extra.astype(np.uint8)])
        what += f" + {len(extra)} of the user's images"
    return images, what


def load_images(folder: Path, manifest: Manifest, settings: Settings, limit: int) -> np.ndarray:
    """Up to `limit` readable X-rays (PNG, JPEG, DICOM) from a folder tree, at model
    resolution; unreadable files are skipped. ValueError when none is readable."""
    return load_images_at(folder, contract.check_contract(manifest), settings, limit)


def load_images_at(
    folder: Path, size: tuple[int, int], settings: Settings, limit: int
) -> np.ndarray:
    """`load_images` at a given (height, width): uint8 [N, height, width]."""
    found = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if len(found) >= limit:
            break
        if (pixels := read_model_input(path, size, settings)) is not None:
            found.append(pixels)
    if not found:
        raise ValueError(f"{folder}: no readable PNG, JPEG or DICOM file")
    return np.stack(found)


def read_model_input(path: Path, size: tuple[int, int], settings: Settings) -> np.ndarray | None:
    """One X-ray file decoded and resized as the engine does; None when unreadable."""
    try:
        image = decode(path.read_bytes(), settings.max_upload_bytes, settings.max_pixels)
    except (OSError, ChexrayError):
        return None
    return resize_for_model(image.pixels, size)


def _run_all(backend, images: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """Probabilities [N, 5] and seconds per image (after one warm-up batch)."""
    backend.run(images[:batch])
    start = time.perf_counter()
    probs = [
        backend.run(images[i : i + batch])[contract.PROBABILITIES]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(probs).astype(np.float64), (time.perf_counter() - start) / len(images)


def compare(
    label: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    thresholds: list[float],
    check_set_name: str,
    seconds_per_image: float,
) -> PrecisionCheck:
    """The gate: probabilities within PRECISION_TOLERANCE, calls identical except where
    fp32 lies within CALL_MARGIN of the threshold."""
    t = np.asarray(thresholds, np.float64)
    diff = np.abs(candidate - reference).max(axis=0)
    differ = (reference >= t) != (candidate >= t)
    outside = differ & (np.abs(reference - t) > contract.CALL_MARGIN)
    tol = contract.PRECISION_TOLERANCE
    return PrecisionCheck(
        label=label,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=machine_name(),
        check_set=check_set_name,
        images=len(reference),
        max_abs_diff=[float(x) for x in diff],
        calls_differ=int(differ.sum()),
        calls_differ_outside_margin=int(outside.sum()),
        tolerance=tol,
        margin=contract.CALL_MARGIN,
        passed=bool(diff.max() <= tol and not outside.any()),
        seconds_per_image=seconds_per_image,
    )


def side_by_side(
    choice: Choice, manifest: Manifest, directory: Path, settings: Settings, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities [N, 5] of onnxruntime fp32 and of `choice` on the same images, and
    `choice`'s seconds per image."""
    batch = max(1, min(settings.max_batch, 8))
    reference = open_backend(REFERENCE, manifest, directory, settings)
    expected, _ = _run_all(reference, images, batch)
    del reference  # one full-size session at a time
    candidate = open_backend(choice, manifest, directory, settings)
    got, seconds = _run_all(candidate, images, batch)
    return expected, got, seconds


def run_check(
    choice: Choice,
    manifest: Manifest,
    directory: Path,
    settings: Settings,
    extra: np.ndarray | None = None,
) -> PrecisionCheck:
    """Compare `choice` with onnxruntime fp32 on the check set."""
    images, what = check_images(manifest, extra)
    expected, got, seconds = side_by_side(choice, manifest, directory, settings, images)
    check = compare(choice.label, expected, got, manifest.thresholds.values, what, seconds)
    log.info(
        "precision check %s: %s (max |diff| %.1e, %d call(s) differ, %d outside the margin)",
        check.label,
        "passed" if check.passed else "FAILED",
        max(check.max_abs_diff),
        check.calls_differ,
        check.calls_differ_outside_margin,
    )
    return check


def with_check(manifest: Manifest, check: PrecisionCheck) -> Manifest:
    return msgspec.structs.replace(
        manifest, precision_checks={**manifest.precision_checks, check.label: check}
    )


def record(directory: Path, manifest: Manifest, checks: list[PrecisionCheck]) -> Manifest:
    """Install the manifest with these checks added (the version does not change: what a
    user gets back from a given choice is the same; the record says it was checked)."""
    for check in checks:
        manifest = with_check(manifest, check)
    install_manifest(directory, manifest)
    return manifest


def runnable(manifest: Manifest, machine: Machine) -> list[Choice]:
    """Every choice besides the reference that this machine and repository can serve."""
    found = []
    if machine.openvino:
        found.append(Choice("openvino", "cpu", "fp32"))
    if machine.bf16:
        found.append(Choice("openvino", "cpu", "bf16"))
    if machine.cuda:
        found.append(Choice("onnxruntime", "cuda", "fp32"))
        if manifest.fused_fp16 is not None:
            found.append(Choice("onnxruntime", "cuda", "fp16"))
    if manifest.fused_int8 is not None:
        # The backend that `choose` serves int8 with on this machine.
        found.append(int8_choice(machine))
    return found


def int8_choice(machine: Machine) -> Choice:
    """What serves CHEXRAY_PRECISION=int8 with the backend left to auto."""
    return Choice("openvino" if machine.openvino else "onnxruntime", "cpu", "int8")


def check_all(
    directory: Path,
    manifest: Manifest,
    settings: Settings,
    extra: np.ndarray | None = None,
    only_missing: bool = False,
) -> Manifest:
    """Check every runnable choice (those without a record, with `only_missing`) and
    install the manifest with the results; returns it."""
    todo = [
        c
        for c in runnable(manifest, Machine.here(settings.provider))
        if not (only_missing and c.label in manifest.precision_checks)
    ]
    if not todo:
        return manifest
    checks = [run_check(c, manifest, directory, settings, extra) for c in todo]
    return record(directory, manifest, checks)


class PrecisionRefused(Exception):
    """The chosen precision failed its check: the server must not serve it."""


def refusal(check: PrecisionCheck) -> str:
    if check.auc_drop is not None:
        drops = [d for d in check.auc_drop if d is not None]
        return (
            f"{check.label} failed its check against onnxruntime fp32 on the labelled set "
            f"{check.auc_set} ({check.created[:10]}, {check.machine}): AUC drop up to "
            f"{max(drops, default=0.0):.4f} (limit {check.auc_limit}). Serve fp32 "
            "(CHEXRAY_PRECISION=fp32) or another backend"
        )
    return (
        f"{check.label} failed its precision check against onnxruntime fp32 on "
        f"{check.images} images ({check.created[:10]}, {check.machine}): max |diff| "
        f"{max(check.max_abs_diff):.1e} (limit {check.tolerance:.0e}), "
        f"{check.calls_differ_outside_margin} present/absent call(s) differ away from the "
        "threshold. Serve fp32 (CHEXRAY_PRECISION=fp32) or another backend"
    )


def gate(
    choice: Choice, manifest: Manifest, directory: Path, settings: Settings
) -> PrecisionCheck | None:
    """The record that lets `choice` serve (None for the fp32 reference itself), running
    the check now when the manifest has none; PrecisionRefused when it failed."""
    if choice.is_reference:
        return None
    check = manifest.precision_checks.get(choice.label)
    if check is None:
        log.warning(
            "no precision check of %s in the manifest: running it now "
            "(`chexray models check-precision` records it)",
            choice.label,
        )
        check = run_check(choice, manifest, directory, settings)
    if not check.passed:
        raise PrecisionRefused(refusal(check))
    return check
