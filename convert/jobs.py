"""Runs a framework-heavy conversion step in a child process and returns its typed result.

TensorFlow and PyTorch are imported only in the children: each full-size Keras export can
take gigabytes, and a fresh process per model hands that memory back to the system.
Failures a user can fix come back as a ConversionError with the child's message; anything
else carries the tail of the child's stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from convert.errors import ConversionError

T = TypeVar("T")


class JobFailure(msgspec.Struct):
    error: str


def run_job(module: str, job: Any, result_type: type[T], env: dict[str, str] | None = None) -> T:
    """Run `python -m module job.json result.json` and decode its result."""
    with tempfile.TemporaryDirectory(prefix="chexray-job-") as tmp:
        job_path, result_path = Path(tmp, "job.json"), Path(tmp, "result.json")
        job_path.write_bytes(msgspec.json.encode(job))
        child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", module, str(job_path), str(result_path)],
            env=child_env,
            stdout=None,  # the child's progress lines go straight to the user
            stderr=subprocess.PIPE,
            text=True,
        )
        if result_path.is_file():
            raw = result_path.read_bytes()
            decoded = msgspec.json.decode(raw)
            if isinstance(decoded, dict) and set(decoded) == {"error"}:
                raise ConversionError(decoded["error"])
            if proc.returncode == 0:
                return msgspec.json.decode(raw, type=result_type)
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ConversionError(
            f"{module} stopped unexpectedly (exit code {proc.returncode}); its last words:\n{tail}"
        )


def job_main(job_type: type[T], handler: Callable[[T], Any]) -> None:
    """Entry point of a child: decode the job, run it, write the result or the error."""
    job_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    job = msgspec.json.decode(job_path.read_bytes(), type=job_type)
    try:
        result = handler(job)
    except ConversionError as exc:
        result_path.write_bytes(msgspec.json.encode(JobFailure(str(exc))))
        sys.exit(2)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    result_path.write_bytes(msgspec.json.encode(result))
