"""`chexray drift`: per finding, the probabilities a model version served in a window (the
audit log's answered records) against that version's reference distribution
(evaluation/drift.py): the calibration set's, kept in the manifest by `chexray calibrate`,
or else the generated check set (server/runtime/checkset.py) run through the engine."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from evaluation.drift import ks, psi, quantile_sketch
from server.runtime.findings import FINDINGS
from server.runtime.manifest import Manifest
from server.settings import Settings

CHECK_SET_IMAGES = 100
FEW = 30  # fewer served values than this: the statistics are noisy


@dataclass(frozen=True)
class Reference:
    source: str  # "calibration" or "check set"
    description: str
    quantiles: dict[str, list[float]]  # per finding, a quantile sketch (or the values)


@dataclass(frozen=True)
class FindingDrift:
    finding: str
    served: int
    psi: float | None
    ks: float | None
    served_mean: float | None
    reference_mean: float
    flagged: bool


def calibration_reference(manifest: Manifest) -> Reference | None:
    c = manifest.calibration
    if c is None or not c.score_quantiles:
        return None
    return Reference(
        "calibration",
        f"calibration set {c.data} ({c.images} images, {c.created[:10]})",
        dict(c.score_quantiles),
    )


def check_set_reference(manifest: Manifest, directory: Path, settings: Settings) -> Reference:
    """The generated check set through the served graph (onnxruntime fp32, the reference
    of every precision): X-ray-like pictures, not X-rays."""
    from server.runtime import contract
    from server.runtime.backends import REFERENCE, open_backend
    from server.runtime.checkset import check_set

    h, w = contract.check_contract(manifest)
    images = check_set(h, w, CHECK_SET_IMAGES)
    backend = open_backend(REFERENCE, manifest, directory, settings)
    batch = max(1, settings.max_batch)
    probs = np.concatenate(
        [
            backend.run(images[i : i + batch])[contract.PROBABILITIES]
            for i in range(0, len(images), batch)
        ]
    ).astype(np.float64)
    return Reference(
        "check set",
        f"no calibration reference for this version (built by convert): the generated check "
        f"set ({CHECK_SET_IMAGES} X-ray-like pictures) run through the engine instead; only "
        "large shifts mean something",
        {f: quantile_sketch(probs[:, d]) for d, f in enumerate(FINDINGS)},
    )


def compare(
    served: dict[str, list[float]], reference: Reference, warning: float
) -> list[FindingDrift]:
    out = []
    for finding in FINDINGS:
        ref = np.asarray(reference.quantiles[finding], np.float64)
        got = np.asarray(served.get(finding, []), np.float64)
        p = psi(ref, got) if got.size else None
        out.append(
            FindingDrift(
                finding,
                int(got.size),
                p,
                ks(ref, got) if got.size else None,
                float(got.mean()) if got.size else None,
                float(ref.mean()),
                p is not None and p > warning,
            )
        )
    return out


def served_probabilities(
    settings: Settings, version: str | None, since: dt.datetime, until: dt.datetime
) -> tuple[str | None, dict[str, list[float]]]:
    """The version (given, else the one most answered in the window) and, per finding,
    the probabilities it served in [since, until)."""
    from server.store import audit
    from server.store.db import Database

    db = Database(settings.db_url)
    db.create_all()
    rows: list[tuple[str | None, list[float]]] = []
    try:
        with db.session() as s:
            for r in audit.records(s, since, until):
                if r.outcome == "answered" and r.probabilities is not None:
                    rows.append((r.model_version, r.probabilities))
    finally:
        db.dispose()
    if version is None:
        versions = Counter(v for v, _ in rows)
        version = versions.most_common(1)[0][0] if versions else None
    served: dict[str, list[float]] = {f: [] for f in FINDINGS}
    for v, probs in rows:
        if v == version:
            for f, p in zip(FINDINGS, probs, strict=False):
                if p is not None:
                    served[f].append(float(p))
    return version, served


def table(findings: list[FindingDrift], warning: float) -> str:
    lines = [
        f"{'finding':<18} {'served':>6} {'PSI':>7} {'KS':>6} {'mean':>6} {'ref mean':>8}  flag",
    ]
    for f in findings:

        def num(x: float | None, width: int, digits: int) -> str:
            return f"{x:>{width}.{digits}f}" if x is not None else f"{'-':>{width}}"

        flag = f"DRIFT (PSI > {warning:g})" if f.flagged else ""
        lines.append(
            f"{f.finding:<18} {f.served:>6} {num(f.psi, 7, 3)} {num(f.ks, 6, 3)} "
            f"{num(f.served_mean, 6, 3)} {f.reference_mean:>8.3f}  {flag}"
        )
    return "\n".join(lines)


def run_drift(args: argparse.Namespace, settings: Settings, directory: Path) -> int:
    """Print the report (and write it as JSON with --json). Exit 0 when no finding is
    flagged, 1 when one is, 2 when there is no reference to compare with."""
    from server.runtime.manifest import RepositoryError
    from server.runtime.repository import archived_versions, current_manifest

    if args.window_days <= 0:
        print("chexray drift: error: --window-days must be more than 0")
        return 2
    window = dt.timedelta(days=args.window_days)
    since = args.since or dt.datetime.now(dt.UTC) - window
    until = since + window
    current = current_manifest(directory)
    version, served = served_probabilities(
        settings, args.model_version or (current.version if current else None), since, until
    )
    if version is None:
        print(f"chexray drift: error: no model repository in {directory} and no answers to go by")
        return 2
    manifests = {m.version: m for m in archived_versions(directory)}
    if current is not None:
        manifests[current.version] = current
    manifest = manifests.get(version)
    if manifest is None:
        print(f"chexray drift: error: version {version} is not in the model repository {directory}")
        return 2
    reference = calibration_reference(manifest)
    if reference is None:
        if current is None or version != current.version:
            print(
                f"chexray drift: error: version {version} has no calibration reference, and "
                "only the version in the repository can be run on the check set"
            )
            return 2
        try:
            reference = check_set_reference(manifest, directory, settings)
        except (RepositoryError, OSError, RuntimeError) as exc:
            print(f"chexray drift: error: cannot run the check set: {exc}")
            return 2
    warning = settings.drift_psi_warning
    findings = compare(served, reference, warning)
    n = max(f.served for f in findings)
    print(f"Score drift of model {version}, {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC")
    print(f"Served: {n} answered analyses (audit log). Reference: {reference.description}.")
    if n == 0:
        print("Nothing was answered by this version in the window: nothing to compare.")
    elif n < FEW:
        print(f"Fewer than {FEW} analyses: the statistics are noisy; widen the window.")
    print()
    print(table(findings, warning))
    flagged = [f.finding for f in findings if f.flagged]
    print()
    print(
        f"Drift (PSI > {warning:g}): {', '.join(flagged)}"
        if flagged
        else f"No finding over the PSI warning ({warning:g})."
    )
    if args.json:
        report = {
            "model_version": version,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "served": n,
            "reference": {"source": reference.source, "description": reference.description},
            "psi_warning": warning,
            "findings": [asdict(f) for f in findings],
            "flagged": flagged,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if flagged else 0
