"""Starting a real `chexray serve` process for tests that speak HTTP to it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT

_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this test run: two asked for in a row
    (a server's HTTP and gRPC ports) must not be the same one, freed in between."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


@contextlib.contextmanager
def running_server(
    repo: Path, root: Path, preexec_fn: Callable[[], None] | None = None, **env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Serve a copy of `repo` with data under `root`; yields (base URL, process).
    `preexec_fn` runs in the child before the server starts (e.g. to set a resource limit)."""
    shutil.copytree(repo, root / "models")
    port = free_port()
    full_env = {
        **os.environ,
        "CHEXRAY_MODEL_DIR": str(root / "models"),
        "CHEXRAY_DATA_DIR": str(root / "data"),
        "CHEXRAY_PORT": str(port),
        # Never Triton's 8001 (another test's server may hold it); off with "0".
        "CHEXRAY_GRPC_PORT": str(free_port()),
        "CHEXRAY_AUTH_RATE_LIMIT": "1000/60",
        "CHEXRAY_LOG_LEVEL": "warning",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "chexray.cli", "serve", "--no-build"],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=preexec_fn,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read()}")
            time.sleep(0.2)
        else:
            pytest.fail("server did not become ready in 60 s")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
