"""Labelled sets: CheXpert's CSV or a plain `path` + five findings CSV, and the policy that
turns uncertain labels into 0, 1 or "not counted".

CheXpert marks each of 14 observations 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or
leaves it blank (not mentioned). Blanks count as negative. Uncertain labels follow the
policy per finding; the default is Pham et al.'s and the legacy application's: U-Ones for
Atelectasis and Edema, U-Zeros for the rest.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from server.runtime.manifest import FINDINGS

Policy = Literal["ones", "zeros", "ignore"]
POLICIES: tuple[str, ...] = ("ones", "zeros", "ignore")
DEFAULT_POLICY: dict[str, Policy] = {
    "Atelectasis": "ones",
    "Cardiomegaly": "zeros",
    "Consolidation": "zeros",
    "Edema": "ones",
    "Pleural Effusion": "zeros",
}
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


class LabelError(Exception):
    """The CSV cannot be read as a labelled set; the message says what to fix."""


def parse_policy(items: list[str] | None) -> dict[str, Policy]:
    """`ones` (every finding) or `Finding=policy` items on top of the default."""
    policy = dict(DEFAULT_POLICY)
    for item in items or []:
        name, _, value = item.rpartition("=")
        value = value.strip().lower().removeprefix("u-")
        if value not in POLICIES:
            raise LabelError(f"--uncertain {item!r}: the policy must be one of {POLICIES}")
        targets = list(FINDINGS) if not name else [_finding(name)]
        for finding in targets:
            policy[finding] = value  # type: ignore[assignment]
    return policy


def _finding(name: str) -> str:
    key = _norm(name)
    for finding in FINDINGS:
        if _norm(finding) == key:
            return finding
    raise LabelError(f"unknown finding {name!r}; one of {list(FINDINGS)}")


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ")


@dataclass
class LabelledSet:
    """Images and their labels [n, 5] in FINDINGS order: 1, 0, or NaN (not counted)."""

    source: str
    kind: Literal["chexpert", "plain"]
    paths: list[Path]
    labels: np.ndarray
    policy: dict[str, Policy]
    rows: int  # data rows in the file
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows left out

    def counts(self) -> dict[str, tuple[int, int, int]]:
        """finding -> (positives, negatives, not counted)."""
        return label_counts(self.labels)


def label_counts(labels: np.ndarray) -> dict[str, tuple[int, int, int]]:
    """finding -> (positives, negatives, not counted) of labels [n, 5]."""
    return {
        finding: (
            int(np.sum(labels[:, d] == 1)),
            int(np.sum(labels[:, d] == 0)),
            int(np.sum(np.isnan(labels[:, d]))),
        )
        for d, finding in enumerate(FINDINGS)
    }


def counted(labels: np.ndarray, scores: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Finding d's labels and scores over the rows whose label counts (not NaN)."""
    keep = ~np.isnan(labels[:, d])
    return labels[keep, d], scores[keep, d]


def has_both_classes(y: np.ndarray) -> bool:
    """AUC, ROC and Youden need at least one positive and one negative."""
    return y.size > 0 and y.min() != y.max()


def _label(raw: str, policy: Policy, where: str) -> float:
    raw = raw.strip()
    if raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise LabelError(f"{where}: label {raw!r} is not 1, 0, -1 or blank") from None
    if value == 1.0:
        return 1.0
    if value == 0.0:
        return 0.0
    if value == -1.0:
        return {"ones": 1.0, "zeros": 0.0, "ignore": float("nan")}[policy]
    raise LabelError(f"{where}: label {raw!r} is not 1, 0, -1 or blank")


def _resolve(root: Path, rel: str) -> Path:
    """CheXpert's paths start with the data set's folder name
    (CheXpert-v1.0-small/valid/...): accept a root above that folder or the folder itself."""
    rel_path = Path(rel.strip())
    if rel_path.is_absolute():
        return rel_path
    first = root / rel_path
    if first.exists() or len(rel_path.parts) < 2:
        return first
    inside = root / Path(*rel_path.parts[1:])
    return inside if inside.exists() else first


def read_labelled_csv(
    csv_path: Path,
    image_root: Path | None = None,
    policy: dict[str, Policy] | None = None,
    frontal_only: bool = False,
    limit: int | None = None,
) -> LabelledSet:
    """Read a CheXpert CSV (recognised by its columns) or a plain `path` + findings CSV.

    Image paths are relative to `image_root` (default: the CSV's folder). Missing images
    are not checked here: the scorer counts whatever it cannot read.
    """
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    policy = policy or dict(DEFAULT_POLICY)
    try:
        fh = csv_path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise LabelError(f"{csv_path}: cannot open ({exc.strerror})") from None
    with fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        by_norm = {_norm(h): h for h in header}
        if "path" not in by_norm:
            raise LabelError(
                f"{csv_path}: no 'Path' (CheXpert) or 'path' column; header is {header}"
            )
        path_col = by_norm["path"]
        chexpert = all(c in header for c in CHEXPERT_COLUMNS)
        kind: Literal["chexpert", "plain"] = "chexpert" if chexpert else "plain"
        columns = []
        for finding in FINDINGS:
            col = by_norm.get(_norm(finding))
            if col is None and finding == "Pleural Effusion":
                col = by_norm.get("effusion")
            if col is None:
                raise LabelError(f"{csv_path}: no column for {finding!r}; header is {header}")
            columns.append(col)
        view_col = by_norm.get("frontal/lateral")
        if frontal_only and view_col is None:
            raise LabelError(f"{csv_path}: --frontal-only needs a 'Frontal/Lateral' column")

        paths, labels, skipped, rows = [], [], {}, 0
        for line, row in enumerate(reader, start=2):
            rows += 1
            if limit is not None and len(paths) >= limit:
                skipped["over --limit"] = skipped.get("over --limit", 0) + 1
                continue
            if frontal_only and (row.get(view_col) or "").strip().lower() != "frontal":
                skipped["lateral view"] = skipped.get("lateral view", 0) + 1
                continue
            rel = (row.get(path_col) or "").strip()
            if not rel:
                raise LabelError(f"{csv_path}:{line}: empty path")
            where = f"{csv_path}:{line}"
            labels.append(
                [
                    _label(row.get(col) or "", policy[finding], f"{where} {col}")
                    for finding, col in zip(FINDINGS, columns, strict=True)
                ]
            )
            paths.append(_resolve(root, rel))
    if not paths:
        raise LabelError(f"{csv_path}: no rows to evaluate ({rows} rows, left out: {skipped})")
    return LabelledSet(
        source=str(csv_path),
        kind=kind,
        paths=paths,
        labels=np.asarray(labels, np.float64).reshape(-1, len(FINDINGS)),
        policy=policy,
        rows=rows,
        skipped=skipped,
    )
