"""dicom3tools' dciodvfy, the IOD validator: its errors and warnings for one Part 10 file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for the file; skips the test where dciodvfy
    is not installed (Debian's dicom3tools package)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    proc = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    # A line reads "Error - ..." or "Warning - ...", some with a tag in front.
    errors = [ln for ln in lines if "Error - " in ln]
    warnings = [ln for ln in lines if "Warning - " in ln]
    if proc.returncode != 0 and not errors:
        errors.append(f"dciodvfy exited {proc.returncode}: {lines[-3:]}")
    return errors, warnings
