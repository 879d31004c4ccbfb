"""The README's pictures of CheXray's DICOM results: a chest CR (generated) is analysed on
a model repository, its Structured Report rendered as DCMTK's dsr2html shows it (through
headless Chromium) and one heatmap object's pixels written out.

    PYTHONPATH=. .venv/bin/python scripts/pacs-pictures.py models_onnx docs/pacs

Needs Debian's dcmtk (dsr2html) and chromium.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import pydicom

from tests.support.api import client, post_image, register
from tests.support.dicom_studies import chest_instance


def main(repo: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, client(repo, Path(tmp), backend="auto") as c:
        auth = register(c, "radiologist")
        study = post_image(c, chest_instance(seed=7), "application/dicom", auth).json()
        sr = c.get(study["urls"]["dicom_sr"], headers=auth).content
        heat = c.get(study["urls"]["dicom_heatmaps"]["Cardiomegaly"], headers=auth).content
        (Path(tmp) / "sr.dcm").write_bytes(sr)
        subprocess.run(["dsr2html", f"{tmp}/sr.dcm", f"{tmp}/sr.html"], check=True)
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--hide-scrollbars",
                "--window-size=1000,1100",
                f"--screenshot={out / 'sr.png'}",
                f"{tmp}/sr.html",
            ],
            check=True,
            capture_output=True,
        )
    rgb = pydicom.dcmread(io.BytesIO(heat)).pixel_array
    cv2.imwrite(str(out / "heatmap-cardiomegaly.png"), rgb[..., ::-1])
    print(f"{out / 'sr.png'}, {out / 'heatmap-cardiomegaly.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
