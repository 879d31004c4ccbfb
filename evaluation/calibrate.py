"""`chexray calibrate`: Youden thresholds and fitted ensemble weights, written as a new
manifest version that the server serves after a restart.

The weights live in the fused graph as one initializer, `ensemble_weights` [1, M, 5]; a new
version copies the graph (fp32 and fp16) with that initializer replaced
(`convert.fuse.reweight`), checks the copy against its own member outputs, and installs a
manifest naming the copies. The previous manifest and its files stay (`chexray models use
VERSION` serves them again).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from convert.errors import ConversionError
from convert.fuse import cpu_session, reweight
from convert.reference import random_images
from evaluation.drift import quantile_sketch
from evaluation.labels import LabelledSet, counted, has_both_classes
from evaluation.metrics import youden_threshold
from evaluation.report import (
    DataSummary,
    ThresholdRates,
    data_lines,
    pct,
    threshold_rates,
)
from evaluation.scoring import Scores
from evaluation.weights import FindingFit, fit_finding
from server.runtime.contract import (
    FP16_TOLERANCE,
    FUSED_TOLERANCE,
    INPUT,
    MEMBER_PROBABILITIES,
    PROBABILITIES,
)
from server.runtime.manifest import (
    FINDINGS,
    Calibration,
    FindingCalibration,
    FoldAUC,
    GraphFile,
    Manifest,
    Parity,
    RepositoryError,
    Thresholds,
    graph_file,
    model_version,
    normalise_weights,
)
from server.runtime.precision import check_all
from server.runtime.repository import install_manifest
from server.settings import Settings

METHOD = (
    "weights: per finding, exhaustive search of non-negative weights on a simplex grid "
    "(step {step}) maximising the AUC of the weighted average (within 0.001 of the best, "
    "the lowest log-loss); stratified {folds}-fold "
    "cross-validation compares the fit on held-out folds with the served, legacy and equal "
    "weights, and the best held-out weighting is served. thresholds: Youden's J "
    "(sensitivity + specificity - 1) on all labelled images under the served weights, "
    "halfway between the two scores around the optimum"
)


@dataclass(frozen=True)
class Plan:
    """What calibrate would serve; nothing is written until `apply`."""

    previous: Manifest
    weights: np.ndarray  # [M, 5] normalised
    thresholds: list[float]
    fits: list[FindingFit]
    new_scores: np.ndarray  # [n, 5]: the ensemble under `weights`
    previous_rates: list[ThresholdRates]  # previous weights and thresholds
    new_rates: list[ThresholdRates]
    calibration: Calibration  # the manifest's record of it


def plan(
    scores: Scores,
    labelled: LabelledSet,
    manifest: Manifest,
    legacy_weights: dict[str, list[float]] | None,
    folds: int = 5,
    grid_step: float = 0.05,
    seed: int = 0,
) -> Plan:
    m = len(manifest.members)
    previous = np.asarray(manifest.weights_normalised, np.float64)
    candidates = {"previous": previous}
    names = [mm.name for mm in manifest.members]
    if legacy_weights is not None and all(n in legacy_weights for n in names):
        candidates["legacy"] = np.asarray(normalise_weights([legacy_weights[n] for n in names]))
    candidates["equal"] = np.full((m, len(FINDINGS)), 1.0 / m)

    y, p = scores.labels, scores.member_probabilities
    fits = [
        fit_finding(
            y[:, d],
            p[:, :, d],
            {name: w[:, d] for name, w in candidates.items()},
            folds=folds,
            grid_step=grid_step,
            seed=seed,
        )
        for d in range(len(FINDINGS))
    ]
    weights = np.stack([fit.weights for fit in fits], axis=1)
    new_scores = scores.ensemble(weights)
    thresholds = list(manifest.thresholds.values)
    for d in range(len(FINDINGS)):
        yd, sd = counted(y, new_scores, d)
        if has_both_classes(yd):
            thresholds[d], _ = youden_threshold(yd, sd)
    thresholds = [float(t) for t in thresholds]
    return Plan(
        previous=manifest,
        weights=weights,
        thresholds=thresholds,
        fits=fits,
        new_scores=new_scores,
        previous_rates=threshold_rates(y, scores.probabilities, manifest.thresholds.values),
        new_rates=threshold_rates(y, new_scores, thresholds),
        calibration=Calibration(
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            data=labelled.source,
            images=len(scores.paths),
            label_policy=dict(labelled.policy),
            method=METHOD.format(step=grid_step, folds=folds),
            folds=folds,
            previous_version=manifest.version,
            findings=[_finding_calibration(f, fit) for f, fit in zip(FINDINGS, fits, strict=True)],
            score_quantiles={f: quantile_sketch(new_scores[:, d]) for d, f in enumerate(FINDINGS)},
        ),
    )


def _run(path: Path, output: str, images: np.ndarray) -> np.ndarray:
    return cpu_session(path).run([output], {INPUT: images})[0].astype(np.float64)


def apply(plan: Plan, directory: Path, settings: Settings) -> Manifest:
    """Write the re-weighted graphs, check each against the previous graph's member outputs
    times the new weights, and install the new manifest; returns it."""
    directory = Path(directory)
    old = plan.previous
    w = plan.weights.astype(np.float32)
    tag = hashlib.sha256(old.fused.sha256.encode() + w.tobytes()).hexdigest()[:12]
    h, wd = (int(d) for d in old.input.shape[1:])
    images = random_images(4, h, wd, seed=99)
    members = _run(directory / old.fused.file, MEMBER_PROBABILITIES, images)
    expected = np.einsum("nmf,mf->nf", members, w)

    graphs: dict[str, GraphFile] = {}
    for src, suffix, tolerance in (
        (old.fused, ".onnx", FUSED_TOLERANCE),
        (old.fused_fp16, ".fp16.onnx", FP16_TOLERANCE),
    ):
        if src is None:
            continue
        rel = f"ensemble-{tag}{suffix}"
        try:
            reweight(directory / src.file, directory / rel, w)
        except ConversionError as exc:
            raise RepositoryError(str(exc)) from None
        diff = float(np.abs(_run(directory / rel, PROBABILITIES, images) - expected).max())
        if not diff <= tolerance:
            raise RepositoryError(f"{rel}: re-weighted graph is off by {diff:.2e}")
        against = "previous graph's members x new weights"
        parity = Parity(diff, tolerance, against, len(images))
        graphs[src.dtype] = graph_file(directory, rel, src.dtype, parity, "calibrated-" + tag)
    fused, fused16 = graphs["float32"], graphs.get("float16")

    c = plan.calibration
    thresholds = Thresholds(
        plan.thresholds,
        f"Youden's J on {Path(c.data).name} ({c.images} images, {c.created[:10]}) "
        "by chexray calibrate",
    )
    weights = [[float(x) for x in row] for row in plan.weights]
    manifest = msgspec.structs.replace(
        old,
        version=model_version(old.preset, fused, fused16, thresholds, old.cam.class_map),
        created=c.created,
        weights=weights,
        weights_normalised=normalise_weights(weights),
        thresholds=thresholds,
        fused=fused,
        fused_fp16=fused16,
        calibration=c,
        # The int8 graph carries the old weights (rebuild it with convert); the precision
        # checks were of the old graphs: the new ones are checked below.
        fused_int8=None,
        precision_checks={},
    )
    install_manifest(directory, manifest)
    return check_all(directory, manifest, settings, only_missing=True)


def _fold(fit: FindingFit, name: str) -> FoldAUC:
    mean, sd = fit.held_out.get(name, (float("nan"), float("nan")))
    return FoldAUC(mean, sd)


def _finding_calibration(finding: str, fit: FindingFit) -> FindingCalibration:
    return FindingCalibration(
        finding=finding,
        positives=fit.positives,
        negatives=fit.negatives,
        fitted=_fold(fit, "fitted"),
        previous=_fold(fit, "previous"),
        legacy=_fold(fit, "legacy"),
        equal=_fold(fit, "equal"),
        weights_from=fit.weights_from,
    )


# -- Report ----------------------------------------------------------------------------------


class CalibrationReport(msgspec.Struct, frozen=True):
    created: str
    model_version: str  # the version calibrated
    new_version: str | None  # None with --dry-run
    data: DataSummary
    method: str
    members: list[str]
    findings: list[FindingCalibration]
    weights_previous: list[list[float]]
    weights_new: list[list[float]]
    weights_fitted: list[list[float] | None]  # per finding, fitted on all rows
    thresholds_previous: list[float]
    thresholds_new: list[float]
    rates_previous: list[ThresholdRates]
    rates_new: list[ThresholdRates]
    figure: str | None = None


def calibration_report(
    p: Plan, data: DataSummary, new_version: str | None, figure: str | None
) -> CalibrationReport:
    return CalibrationReport(
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        model_version=p.previous.version,
        new_version=new_version,
        data=data,
        method=p.calibration.method,
        members=[m.name for m in p.previous.members],
        findings=p.calibration.findings,
        weights_previous=p.previous.weights_normalised,
        weights_new=[[float(x) for x in row] for row in p.weights],
        weights_fitted=[None if f.fitted is None else [float(x) for x in f.fitted] for f in p.fits],
        thresholds_previous=list(p.previous.thresholds.values),
        thresholds_new=p.thresholds,
        rates_previous=p.previous_rates,
        rates_new=p.new_rates,
        figure=figure,
    )


def _auc(v: FoldAUC) -> str:
    return "n/a" if not np.isfinite(v.mean) else f"{v.mean:.3f} ± {v.sd:.3f}"


def calibration_markdown(r: CalibrationReport) -> str:
    outcome = (
        f"Installed as version **{r.new_version}** (served after a restart; "
        f"`chexray models use {r.model_version}` goes back)."
        if r.new_version
        else "Dry run: nothing was written."
    )
    lines = [
        f"# CheXray calibration of model {r.model_version}",
        "",
        f"{r.created}. {outcome}",
        "",
        *data_lines(r.data),
        "",
        "## Held-out AUC per weighting (mean ± sd over the folds)",
        "",
        "| finding | pos/neg | served before | legacy | equal | fitted | gain vs before | serves |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in r.findings:
        gain = f.fitted.mean - f.previous.mean
        lines.append(
            f"| {f.finding} | {f.positives}/{f.negatives} | {_auc(f.previous)} | {_auc(f.legacy)} "
            f"| {_auc(f.equal)} | {_auc(f.fitted)} "
            f"| {'n/a' if not np.isfinite(gain) else f'{gain:+.3f}'} | {f.weights_from} |"
        )
    lines += ["", "## Weights (normalised per finding): before → after", ""]
    lines.append("| member | " + " | ".join(FINDINGS) + " |")
    lines.append("|---|" + "---|" * len(FINDINGS))
    for i, name in enumerate(r.members):
        cells = [
            f"{r.weights_previous[i][d]:.2f} → {r.weights_new[i][d]:.2f}"
            for d in range(len(FINDINGS))
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "A member's sway over the ensemble is its weight times the spread of its outputs: the "
        "weight of a member whose outputs barely vary changes the ranking little and mostly "
        "shifts the probability scale, which the thresholds follow.",
        "",
        "## Thresholds: before → after",
        "",
        "| finding | threshold | sensitivity | specificity | PPV | NPV |",
        "|---|---|---|---|---|---|",
    ]
    before = {x.finding: x for x in r.rates_previous}
    for a in r.rates_new:
        b = before.get(a.finding)
        if b is None:
            continue
        lines.append(
            f"| {a.finding} | {b.threshold:.4f} → {a.threshold:.4f} "
            f"| {pct(b.sensitivity)} → {pct(a.sensitivity)} "
            f"| {pct(b.specificity)} → {pct(a.specificity)} "
            f"| {pct(b.ppv)} → {pct(a.ppv)} | {pct(b.npv)} → {pct(a.npv)} |"
        )
    lines += [
        "",
        "Thresholds are chosen on all the labelled images, so their rates here are "
        "optimistic; the held-out AUCs above are not.",
        "",
        f"Method: {r.method}.",
    ]
    if r.figure:
        lines += ["", f"![ROC curves before and after]({r.figure})"]
    return "\n".join(lines) + "\n"
