"""A generated labelled set in CheXpert's CSV format whose labels drive what the images show.

Each finding owns one cell of a 4x4 grid over the left half of the picture; a positive
finding brightens its cell (by a random amount, so classes overlap), an uncertain one
brightens it half as much, and a negative one sometimes a little. The chest-like
background is left-right symmetric, so the cell minus its mirror image carries the
evidence: `tests/support/make_keras_files.py informative` builds a Keras member that reads exactly
that, which makes it informative by construction. A distractor cell brightens at random,
whatever the labels; the same script builds a member that reads only that cell, as
confident as the informative one and worth nothing, for calibrate to weigh down.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from server.runtime.manifest import FINDINGS
from tests.support.images import anatomy

GRID = 4
# (row, column) of each finding's cell, in FINDINGS order: all in the left half.
CELLS = [(0, 0), (1, 1), (2, 0), (3, 1), (1, 0)]
DISTRACTOR = (0, 1)  # its mirror (0, 2) is no finding's either
OBSERVATIONS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
FOLDER = "CheXpert-v1.0-small"


def draw(labels: np.ndarray, rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """An 8-bit X-ray showing `labels` (1 positive, 0 negative, -1 uncertain per finding)."""
    img = anatomy(size, size, seed=int(rng.integers(1 << 30)))
    img = (img + img[:, ::-1]) / 2  # exactly symmetric background
    cell = size // GRID
    for (r, c), label in zip(CELLS, labels, strict=True):
        if label == 1:
            amount = rng.normal(0.16, 0.07)
        elif label == -1:
            amount = rng.normal(0.08, 0.05)
        else:
            amount = rng.normal(0.0, 0.05) if rng.random() < 0.5 else 0.0
        img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] += amount
    r, c = DISTRACTOR
    if rng.random() < 0.5:
        img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] += rng.normal(0.16, 0.07)
    img += rng.normal(0, 0.01, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_chexpert_set(
    root: Path,
    n: int = 160,
    seed: int = 0,
    prevalence: float = 0.35,
    size: int = 160,
    ext: str = "png",
) -> tuple[Path, np.ndarray]:
    """Write `n` frontal images (plus two laterals, one missing and one unreadable file)
    and `root/CheXpert-v1.0-small/valid.csv`; returns (csv path, the raw labels [n, 5])."""
    rng = np.random.default_rng(seed)
    base = root / FOLDER
    raw = np.where(rng.random((n, len(FINDINGS))) < prevalence, 1.0, 0.0)
    uncertain = rng.random((n, len(FINDINGS))) < 0.06
    raw[uncertain] = -1.0
    blank = (raw == 0) & (rng.random((n, len(FINDINGS))) < 0.5)
    rows = []
    for i in range(n):
        rel = f"{FOLDER}/valid/patient{i:05d}/study1/view1_frontal.{ext}"
        (base / Path(rel).relative_to(FOLDER)).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), draw(raw[i], rng, size))
        cells = {f: "" if blank[i, d] else f"{raw[i, d]:.1f}" for d, f in enumerate(FINDINGS)}
        rows.append(_row(rel, "Frontal", cells, rng))
    extra = [
        (f"{FOLDER}/valid/patient{n:05d}/study1/view2_lateral.{ext}", "Lateral", "write"),
        (f"{FOLDER}/valid/patient{n + 1:05d}/study1/view1_frontal.{ext}", "Frontal", "missing"),
        (f"{FOLDER}/valid/patient{n + 2:05d}/study1/view1_frontal.{ext}", "Frontal", "text"),
    ]
    for rel, view, what in extra:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if what == "write":
            cv2.imwrite(str(path), draw(np.zeros(len(FINDINGS)), rng, size))
        elif what == "text":
            path.write_text("not an image\n")
        rows.append(_row(rel, view, {f: "0.0" for f in FINDINGS}, rng))
    csv_path = base / "valid.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return csv_path, raw


def _row(rel: str, view: str, cells: dict[str, str], rng: np.random.Generator) -> list[str]:
    values = {o: "" for o in OBSERVATIONS} | cells
    return [
        rel,
        "Female" if rng.random() < 0.5 else "Male",
        str(int(rng.integers(20, 90))),
        view,
        "AP" if view == "Frontal" else "",
        *[values[o] for o in OBSERVATIONS],
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a generated CheXpert-format set.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--ext", choices=["png", "jpg"], default="jpg")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    print(write_chexpert_set(a.root, a.n, a.seed, size=a.size, ext=a.ext)[0])
