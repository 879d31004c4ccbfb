"""What `chexray evaluate` measures, as msgspec Structs written to JSON and Markdown, and
the ROC figure (one panel per finding)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import numpy as np

from evaluation.labels import LabelledSet, counted, has_both_classes, label_counts
from evaluation.metrics import (
    CATEGORICAL_ACCURACY_DEFINITION,
    Rates,
    auc,
    categorical_accuracy,
    rates_at,
    roc_curve,
)
from evaluation.scoring import Scores
from server.runtime.manifest import FINDINGS, Manifest

ENSEMBLE = "ensemble"


class AUCValue(msgspec.Struct, frozen=True):
    auc: float
    ci95: tuple[float, float]  # DeLong


class NetworkAUC(msgspec.Struct, frozen=True):
    network: str
    findings: dict[str, AUCValue | None]  # None: that finding lacks positives or negatives
    average: float | None  # mean over the findings that have an AUC


class ThresholdRates(Rates, frozen=True, kw_only=True):
    finding: str


class LabelCounts(msgspec.Struct, frozen=True):
    positives: int
    negatives: int
    not_counted: int  # uncertain labels under the "ignore" policy


class DataSummary(msgspec.Struct, frozen=True):
    csv: str
    kind: str
    rows: int
    evaluated: int
    left_out: dict[str, int]  # reason -> rows (view, limit)
    unreadable: dict[str, int]  # reason -> images
    unreadable_examples: dict[str, list[str]]
    label_policy: dict[str, str]
    labels: dict[str, LabelCounts]


class EvaluationReport(msgspec.Struct, frozen=True):
    created: str
    model_version: str
    trained: bool
    data: DataSummary
    seconds: float
    images_per_second: float
    auc: list[NetworkAUC]  # members, then the ensemble
    thresholds: list[ThresholdRates]  # the ensemble at the served thresholds
    categorical_accuracy: float
    categorical_accuracy_definition: str
    auc_method: str = "Mann-Whitney (ties half), 95% CI from DeLong's variance, clipped to [0, 1]"
    figure: str | None = None


def data_summary(labelled: LabelledSet, scores: Scores) -> DataSummary:
    counts = {f: LabelCounts(*c) for f, c in label_counts(scores.labels).items()}
    return DataSummary(
        csv=labelled.source,
        kind=labelled.kind,
        rows=labelled.rows,
        evaluated=len(scores.paths),
        left_out=dict(labelled.skipped),
        unreadable={k: len(v) for k, v in scores.unreadable.items()},
        unreadable_examples={k: v[:3] for k, v in scores.unreadable.items()},
        label_policy=dict(labelled.policy),
        labels=counts,
    )


def network_auc(name: str, labels: np.ndarray, scores: np.ndarray) -> NetworkAUC:
    """AUC per finding of scores [n, 5]; rows whose label is not counted are dropped."""
    per: dict[str, AUCValue | None] = {}
    for d, finding in enumerate(FINDINGS):
        y, s = counted(labels, scores, d)
        if not has_both_classes(y):
            per[finding] = None
            continue
        a = auc(y, s)
        per[finding] = AUCValue(a.value, a.ci95)
    values = [v.auc for v in per.values() if v is not None]
    return NetworkAUC(name, per, float(np.mean(values)) if values else None)


def threshold_rates(labels: np.ndarray, scores: np.ndarray, thresholds: list[float]):
    out = []
    for d, finding in enumerate(FINDINGS):
        y, s = counted(labels, scores, d)
        if not y.size:
            continue
        r = rates_at(y, s, thresholds[d])
        out.append(ThresholdRates(finding=finding, **msgspec.structs.asdict(r)))
    return out


def evaluation_report(
    labelled: LabelledSet, scores: Scores, manifest: Manifest
) -> EvaluationReport:
    y = scores.labels
    networks = [
        network_auc(name, y, scores.member_probabilities[:, i])
        for i, name in enumerate(scores.members)
    ]
    networks.append(network_auc(ENSEMBLE, y, scores.probabilities))
    n = len(scores.paths)
    return EvaluationReport(
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        model_version=scores.model_version,
        trained=manifest.trained,
        data=data_summary(labelled, scores),
        seconds=scores.seconds,
        images_per_second=n / scores.seconds if scores.seconds > 0 else 0.0,
        auc=networks,
        thresholds=threshold_rates(y, scores.probabilities, manifest.thresholds.values),
        categorical_accuracy=categorical_accuracy(y, scores.probabilities) if n else float("nan"),
        categorical_accuracy_definition=CATEGORICAL_ACCURACY_DEFINITION,
    )


# -- Markdown --------------------------------------------------------------------------------


def _auc_cell(v: AUCValue | None) -> str:
    return "n/a" if v is None else f"{v.auc:.3f} [{v.ci95[0]:.3f}–{v.ci95[1]:.3f}]"


def auc_table(networks: list[NetworkAUC]) -> list[str]:
    lines = [
        "| network | " + " | ".join(FINDINGS) + " | average |",
        "|---|" + "---|" * (len(FINDINGS) + 1),
    ]
    for net in networks:
        name = f"**{net.network}**" if net.network == ENSEMBLE else net.network
        avg = "n/a" if net.average is None else f"{net.average:.3f}"
        cells = [_auc_cell(net.findings[f]) for f in FINDINGS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg} |")
    return lines


def pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f}%"


def rates_table(rows: list[ThresholdRates]) -> list[str]:
    lines = [
        "| finding | threshold | sensitivity | specificity | PPV | NPV | accuracy | TP/FP/TN/FN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.finding} | {r.threshold:.4f} | {pct(r.sensitivity)} | {pct(r.specificity)} "
            f"| {pct(r.ppv)} | {pct(r.npv)} | {pct(r.accuracy)} "
            f"| {r.tp}/{r.fp}/{r.tn}/{r.fn} |"
        )
    return lines


def data_lines(d: DataSummary) -> list[str]:
    lines = [
        f"- Labels: `{d.csv}` ({d.kind} CSV, {d.rows} rows); **{d.evaluated} images evaluated**.",
    ]
    if d.left_out:
        lines.append(
            "- Left out by the options: " + ", ".join(f"{v} {k}" for k, v in d.left_out.items())
        )
    if d.unreadable:
        lines.append(
            "- Could not be read (left out): "
            + ", ".join(f"{v} {k}" for k, v in d.unreadable.items())
            + "; e.g. "
            + ", ".join(f"`{p}`" for v in d.unreadable_examples.values() for p in v[:1])
        )
    lines.append(
        "- Uncertain labels: "
        + ", ".join(f"{f} U-{p.capitalize()}" for f, p in d.label_policy.items())
        + "; blanks count as negative."
    )
    lines.append(
        "- Positives / negatives (not counted): "
        + ", ".join(
            f"{f} {c.positives}/{c.negatives}" + (f" ({c.not_counted})" if c.not_counted else "")
            for f, c in d.labels.items()
        )
    )
    return lines


def evaluation_markdown(r: EvaluationReport) -> str:
    lines = [
        f"# CheXray evaluation: model {r.model_version}",
        "",
        f"{r.created}. {r.data.evaluated} images in {r.seconds:.1f} s "
        f"({r.images_per_second:.2f} images/s).",
    ]
    if not r.trained:
        lines += [
            "",
            "**Untrained model**: some networks carry random weights, so these numbers say "
            "nothing about diagnostic value.",
        ]
    lines += ["", *data_lines(r.data), "", "## AUC per finding", ""]
    lines += auc_table(r.auc)
    lines += ["", f"AUC: {r.auc_method}.", "", "## The ensemble at the served thresholds", ""]
    lines += rates_table(r.thresholds)
    lines += [
        "",
        f"Categorical accuracy: **{pct(r.categorical_accuracy)}**. "
        f"{r.categorical_accuracy_definition}",
    ]
    if r.figure:
        lines += ["", f"![ROC curves]({r.figure})"]
    return "\n".join(lines) + "\n"


# -- Figure ----------------------------------------------------------------------------------


def roc_figure(
    path: Path,
    labels: np.ndarray,
    curves: dict[str, np.ndarray],
    points: dict[str, tuple[str, list[float]]],
    title: str,
) -> None:
    """One panel per finding: a ROC curve per entry of `curves` (scores [n, 5]; the last
    one drawn bold), and for each entry of `points` (label -> (curve, thresholds)) the
    operating point of that curve at those thresholds."""
    import matplotlib  # the evaluate extra; the CLI checks for it before any work

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13.5, 9), dpi=110)
    names = list(curves)
    for d, finding in enumerate(FINDINGS):
        ax = axes.flat[d]
        y = labels[~np.isnan(labels[:, d]), d]
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--")
        if not has_both_classes(y):
            ax.text(0.5, 0.5, "needs positives and negatives", ha="center", va="center")
        else:
            for i, name in enumerate(names):
                fpr, tpr, _ = roc_curve(*counted(labels, curves[name], d))
                a = np.trapezoid(tpr, fpr)  # the AUC, from the curve just computed
                bold = i == len(names) - 1
                ax.plot(
                    fpr,
                    tpr,
                    lw=2.4 if bold else 1.1,
                    color="black" if bold else None,
                    alpha=1.0 if bold else 0.8,
                    label=f"{name} {a:.3f}",
                    zorder=3 if bold else 2,
                )
            for j, (label, (curve, thresholds)) in enumerate(points.items()):
                r = rates_at(*counted(labels, curves[curve], d), thresholds[d])
                ax.plot(
                    1 - r.specificity,
                    r.sensitivity,
                    marker="o^sD"[j % 4],
                    ms=8,
                    mfc="white",
                    mec="crimson",
                    mew=2,
                    ls="none",
                    label=f"{label} t={thresholds[d]:.3f}",
                    zorder=4,
                )
        ax.set_title(f"{finding} (n={y.size}, {int(np.sum(y == 1))} positive)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.legend(loc="lower right", fontsize=7.5, title="AUC", title_fontsize=7.5)
        ax.set_aspect("equal")
    axes.flat[-1].axis("off")
    axes.flat[-1].text(0, 0.5, title, fontsize=10, va="center", wrap=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
