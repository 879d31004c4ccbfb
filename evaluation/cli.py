"""`chexray evaluate` and `chexray calibrate`: arguments and the order of the work."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from evaluation.labels import POLICIES, LabelError, LabelledSet, parse_policy, read_labelled_csv
from server.runtime.manifest import Manifest, RepositoryError
from server.runtime.repository import verify_repository
from server.settings import Settings, SettingsError

if TYPE_CHECKING:
    from evaluation.scoring import Scores


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--csv",
        type=Path,
        required=True,
        help="labels: CheXpert's CSV (Path, Sex, Age, Frontal/Lateral, AP/PA, 14 observations) "
        "or a plain CSV of `path` and the five findings (1, 0, -1 uncertain, blank negative)",
    )
    p.add_argument(
        "--images",
        type=Path,
        help="the folder image paths are relative to (default: the CSV's folder); for "
        "CheXpert, the folder that holds CheXpert-v1.0-small/ or that folder itself",
    )
    p.add_argument(
        "--uncertain",
        action="append",
        metavar="[FINDING=]POLICY",
        help=f"uncertain (-1) labels: one of {', '.join(POLICIES)}, for every finding or "
        "for one (repeatable). Default U-Ones for Atelectasis and Edema, U-Zeros for the "
        "rest (Pham et al.)",
    )
    p.add_argument("--frontal-only", action="store_true", help="skip lateral views")
    p.add_argument(
        "--limit", type=_at_least(1), help="evaluate the first N rows that pass the filters"
    )
    p.add_argument(
        "--batch-size", type=_at_least(1), default=8, help="images per engine run (default 8)"
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        help="model repository (default: the model_dir setting, CHEXRAY_MODEL_DIR, "
        "else models_onnx)",
    )
    p.add_argument("--out", type=Path, help="report folder (default: reports/<kind>-<version>)")
    p.add_argument("--no-figure", action="store_true", help="skip the ROC figure (no matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument(
        "--folds", type=_at_least(2), default=5, help="cross-validation folds (default 5)"
    )
    p.add_argument("--grid-step", type=float, default=0.05, help="weight grid step (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    p.add_argument(
        "--scores",
        type=Path,
        help="reuse scores.npz from an earlier `chexray evaluate` of the same CSV and "
        "networks instead of running the images again",
    )
    p.add_argument("--dry-run", action="store_true", help="report only; change nothing")


def _labelled(args: argparse.Namespace) -> LabelledSet:
    if not args.no_figure and importlib.util.find_spec("matplotlib") is None:
        raise LabelError(
            "the ROC figure needs matplotlib: pip install 'chexray[evaluate]', or pass --no-figure"
        )
    return read_labelled_csv(
        args.csv,
        args.images,
        parse_policy(args.uncertain),
        frontal_only=args.frontal_only,
        limit=args.limit,
    )


def _settings(args: argparse.Namespace) -> Settings:
    """The server's settings, `--model-dir` first; one session: offline scoring forms its
    own batches and runs one at a time."""
    if args.model_dir is None:
        return Settings.from_env(instances=1)
    return Settings.from_env(model_dir=args.model_dir, instances=1)


def _scores(
    args: argparse.Namespace, settings: Settings, labelled: LabelledSet
) -> tuple[Scores, Manifest]:
    from evaluation.scoring import Scores, score
    from server.runtime.engine import Engine

    saved = getattr(args, "scores", None)
    if saved is not None:
        manifest = verify_repository(settings.model_dir)
        return Scores.load(saved, manifest).relabelled(labelled, manifest), manifest
    engine = Engine(settings)
    print(
        f"Scoring {len(labelled.paths)} images with model {engine.manifest.version} on "
        f"{engine.provider} in batches of {args.batch_size}",
        file=sys.stderr,
    )
    return score(engine, labelled, args.batch_size, progress=not args.quiet), engine.manifest


def _out_dir(args: argparse.Namespace, kind: str, version: str) -> Path:
    out = args.out or Path("reports") / f"{kind}-{version}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write(out: Path, name: str, report: msgspec.Struct, markdown: str) -> None:
    (out / f"{name}.json").write_bytes(
        msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
    )
    (out / f"{name}.md").write_text(markdown)


def run_evaluate(args: argparse.Namespace) -> int:
    from evaluation.report import ENSEMBLE, evaluation_markdown, evaluation_report, roc_figure

    try:
        settings = _settings(args)
        labelled = _labelled(args)
        scores, manifest = _scores(args, settings, labelled)
    except (LabelError, RepositoryError, SettingsError, ValueError) as exc:
        print(f"chexray evaluate: {exc}")
        return 2
    if not scores.paths:
        print(f"chexray evaluate: none of the {len(labelled.paths)} images could be read")
        return 2
    out = _out_dir(args, "evaluation", scores.model_version)
    report = evaluation_report(labelled, scores, manifest)
    if not args.no_figure:
        curves = {
            **{n: scores.member_probabilities[:, i] for i, n in enumerate(scores.members)},
            ENSEMBLE: scores.probabilities,
        }
        roc_figure(
            out / "roc.png",
            scores.labels,
            curves,
            {"served threshold": (ENSEMBLE, manifest.thresholds.values)},
            f"Model {scores.model_version}\n{len(scores.paths)} images from\n{labelled.source}",
        )
        report = msgspec.structs.replace(report, figure="roc.png")
    scores.save(out / "scores.npz")
    markdown = evaluation_markdown(report)
    _write(out, "evaluation", report, markdown)
    print(markdown)
    print(f"Report: {out / 'evaluation.md'} (and .json, roc.png, scores.npz)")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from convert.presets import LEGACY_WEIGHTS
    from evaluation.calibrate import (
        apply,
        calibration_markdown,
        calibration_report,
        plan,
    )
    from evaluation.report import data_summary, roc_figure

    try:
        settings = _settings(args)
        labelled = _labelled(args)
        scores, manifest = _scores(args, settings, labelled)
        if not scores.paths:
            raise ValueError(f"none of the {len(labelled.paths)} images could be read")
        p = plan(scores, labelled, manifest, LEGACY_WEIGHTS, args.folds, args.grid_step, args.seed)
    except (LabelError, RepositoryError, SettingsError, ValueError) as exc:
        print(f"chexray calibrate: {exc}")
        return 2
    out = _out_dir(args, "calibration", manifest.version)
    figure = None
    if not args.no_figure:
        roc_figure(
            out / "roc.png",
            scores.labels,
            {"served before": scores.probabilities, "calibrated": p.new_scores},
            {
                "threshold before": ("served before", manifest.thresholds.values),
                "calibrated threshold": ("calibrated", p.thresholds),
            },
            f"Calibration of {manifest.version}\n{len(scores.paths)} images from\n"
            f"{labelled.source}",
        )
        figure = "roc.png"
    new_version = None
    if not args.dry_run:
        try:
            new_version = apply(p, settings.model_dir, settings).version
        except RepositoryError as exc:
            print(f"chexray calibrate: {exc}")
            return 2
    report = calibration_report(p, data_summary(labelled, scores), new_version, figure)
    markdown = calibration_markdown(report)
    _write(out, "calibration", report, markdown)
    print(markdown)
    print(f"Report: {out / 'calibration.md'} (and .json" + (", roc.png)" if figure else ")"))
    return 0
