"""`chexray calibrate`: Youden thresholds and fitted ensemble weights, written as a new
manifest version that the server serves after a restart.

The weights live in the fused graph as one initializer, `ensemble_weights` [1, M, 5]; a new
version copies the graph (fp32 and fp16) with that initializer replaced, checks the copy
against its own member outputs, and installs a manifest naming the copies. The previous
manifest and its files stay (`chexray models use VERSION` serves them again).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import onnx
from onnx import numpy_helper

from evaluation.labels import LabelledSet
from evaluation.metrics import youden_threshold
from evaluation.report import (
    DataSummary,
    ThresholdRates,
    _pct,
    data_lines,
    threshold_rates,
)
from evaluation.scoring import Scores
from evaluation.weights import FindingFit, fit_finding
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
    model_version,
    normalise_weights,
    sha256_file,
)
from server.runtime.repository import install_manifest

WEIGHTS_INITIALIZER = "ensemble_weights"
FP32_TOLERANCE = 1e-5
FP16_TOLERANCE = 1e-2
METHOD = (
    "weights: per finding, exhaustive search of non-negative weights on a simplex grid "
    "(step {step}) maximising the AUC of the weighted average (within 0.001 of the best, "
    "the lowest log-loss); stratified {folds}-fold "
    "cross-validation compares the fit on held-out folds with the served, seed and equal "
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
    candidates: dict[str, np.ndarray]  # name -> [M, 5]
    previous_rates: list[ThresholdRates]  # previous weights and thresholds
    new_rates: list[ThresholdRates]
    folds: int
    grid_step: float


def plan(
    scores: Scores,
    manifest: Manifest,
    seed_weights: dict[str, list[float]] | None,
    folds: int = 5,
    grid_step: float = 0.05,
    seed: int = 0,
) -> Plan:
    m = len(manifest.members)
    previous = np.asarray(manifest.weights_normalised, np.float64)
    candidates = {"previous": previous}
    names = [mm.name for mm in manifest.members]
    if seed_weights is not None and all(n in seed_weights for n in names):
        candidates["seed"] = np.asarray(normalise_weights([seed_weights[n] for n in names]))
    candidates["equal"] = np.full((m, len(FINDINGS)), 1.0 / m)

    y, p = scores.labels, scores.member_probabilities
    fits, weights, thresholds = [], previous.copy(), list(manifest.thresholds.values)
    for d in range(len(FINDINGS)):
        fit = fit_finding(
            y[:, d],
            p[:, :, d],
            {name: w[:, d] for name, w in candidates.items()},
            folds=folds,
            grid_step=grid_step,
            seed=seed,
        )
        fits.append(fit)
        weights[:, d] = fit.weights
        keep = ~np.isnan(y[:, d])
        yd = y[keep, d]
        if yd.size and yd.min() != yd.max():
            thresholds[d], _ = youden_threshold(yd, p[keep, :, d] @ weights[:, d])
    new_scores = scores.ensemble(weights)
    return Plan(
        previous=manifest,
        weights=weights,
        thresholds=[float(t) for t in thresholds],
        fits=fits,
        candidates=candidates,
        previous_rates=threshold_rates(y, scores.probabilities, manifest.thresholds.values),
        new_rates=threshold_rates(y, new_scores, thresholds),
        folds=folds,
        grid_step=grid_step,
    )


def _reweighted(src: Path, dest: Path, weights: np.ndarray) -> None:
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == WEIGHTS_INITIALIZER:
            old = numpy_helper.to_array(init)
            if old.shape != (1, *weights.shape):
                raise RepositoryError(
                    f"{src}: {WEIGHTS_INITIALIZER} is {list(old.shape)}, expected "
                    f"{[1, *weights.shape]}"
                )
            init.CopyFrom(numpy_helper.from_array(weights[None].astype(old.dtype), init.name))
            break
    else:
        raise RepositoryError(
            f"{src}: no {WEIGHTS_INITIALIZER!r} initializer; rebuild with `chexray convert`"
        )
    tmp = dest.with_name(dest.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, dest)


def _run(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    probs, members = session.run(["probabilities", "member_probabilities"], {"image": images})
    return probs.astype(np.float64), members.astype(np.float64)


def _graph_file(directory: Path, rel: str, dtype: str, parity: Parity, key: str) -> GraphFile:
    path = directory / rel
    return GraphFile(rel, sha256_file(path), dtype, parity, path.stat().st_size, key)  # type: ignore[arg-type]


def apply(plan: Plan, directory: Path, labelled: LabelledSet, scores: Scores) -> Manifest:
    """Write the re-weighted graphs and install the new manifest; returns it."""
    directory = Path(directory)
    old = plan.previous
    w = plan.weights.astype(np.float32)
    tag = hashlib.sha256(old.fused.sha256.encode() + w.tobytes()).hexdigest()[:12]
    h, wd = (int(d) for d in old.input.shape[1:])
    images = np.random.default_rng(99).integers(0, 256, (4, h, wd), dtype=np.uint8)

    rel = f"ensemble-{tag}.onnx"
    _reweighted(directory / old.fused.file, directory / rel, w)
    probs, members = _run(directory / rel, images)
    _, old_members = _run(directory / old.fused.file, images)
    diff = max(
        float(np.abs(members - old_members).max()),
        float(np.abs(probs - np.einsum("nmf,mf->nf", members, w)).max()),
    )
    if not diff <= FP32_TOLERANCE:
        raise RepositoryError(f"{rel}: re-weighted graph is off by {diff:.2e}")
    fused = _graph_file(
        directory,
        rel,
        "float32",
        Parity(diff, FP32_TOLERANCE, "previous graph's members x new weights", len(images)),
        "calibrated-" + tag,
    )
    fused16 = None
    if old.fused_fp16 is not None:
        rel16 = f"ensemble-{tag}.fp16.onnx"
        _reweighted(directory / old.fused_fp16.file, directory / rel16, w)
        probs16, _ = _run(directory / rel16, images)
        diff16 = float(np.abs(probs16 - probs).max())
        if not diff16 <= FP16_TOLERANCE:
            raise RepositoryError(f"{rel16}: differs from fp32 by {diff16:.2e}")
        fused16 = _graph_file(
            directory,
            rel16,
            "float16",
            Parity(diff16, FP16_TOLERANCE, "fused fp32", len(images)),
            "calibrated-" + tag,
        )

    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    n = len(scores.paths)
    thresholds = Thresholds(
        plan.thresholds,
        f"Youden's J on {Path(labelled.source).name} ({n} images, {created[:10]}) "
        "by chexray calibrate",
    )
    calibration = Calibration(
        created=created,
        data=labelled.source,
        images=n,
        label_policy=dict(labelled.policy),
        method=METHOD.format(step=plan.grid_step, folds=plan.folds),
        folds=plan.folds,
        previous_version=old.version,
        findings=[_finding_calibration(f, fit) for f, fit in zip(FINDINGS, plan.fits, strict=True)],
    )
    weights = [[float(x) for x in row] for row in plan.weights]
    manifest = msgspec.structs.replace(
        old,
        version=model_version(old.preset, fused, fused16, thresholds, old.cam.class_map),
        created=created,
        weights=weights,
        weights_normalised=normalise_weights(weights),
        thresholds=thresholds,
        fused=fused,
        fused_fp16=fused16,
        calibration=calibration,
    )
    install_manifest(directory, manifest)
    return manifest


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
        seed=_fold(fit, "seed"),
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
        method=METHOD.format(step=p.grid_step, folds=p.folds),
        members=[m.name for m in p.previous.members],
        findings=[_finding_calibration(f, fit) for f, fit in zip(FINDINGS, p.fits, strict=True)],
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
        "| finding | pos/neg | served before | seed | equal | fitted | gain vs before | serves |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in r.findings:
        gain = f.fitted.mean - f.previous.mean
        lines.append(
            f"| {f.finding} | {f.positives}/{f.negatives} | {_auc(f.previous)} | {_auc(f.seed)} "
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
            f"| {_pct(b.sensitivity)} → {_pct(a.sensitivity)} "
            f"| {_pct(b.specificity)} → {_pct(a.specificity)} "
            f"| {_pct(b.ppv)} → {_pct(a.ppv)} | {_pct(b.npv)} → {_pct(a.npv)} |"
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
