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


def _start(
    repo: Path,
    root: Path,
    env: dict[str, str],
    preexec_fn: Callable[[], None] | None = None,
    log: Path | None = None,
) -> tuple[str, subprocess.Popen]:
    """Start serving a copy of `repo` with data under `root`; its output goes to a pipe
    (proc.stdout), or to the file `log`."""
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
    output = subprocess.PIPE if log is None else log.open("w")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chexray.cli", "serve", "--no-build"],
            cwd=ROOT,
            env=full_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec_fn,
        )
    finally:
        if log is not None:
            output.close()
    return f"http://127.0.0.1:{port}", proc


def _wait_ready(servers: list[tuple[str, subprocess.Popen]], logs: list[Path | None]) -> None:
    deadline = time.monotonic() + 60
    waiting = list(zip(servers, logs, strict=True))
    while waiting:
        (base, proc), log = waiting[0]
        try:
            if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                waiting.pop(0)
                continue
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            output = log.read_text() if log is not None else proc.stdout.read()
            pytest.fail(f"server exited: {output}")
        if time.monotonic() > deadline:
            pytest.fail("server did not become ready in 60 s")
        time.sleep(0.2)


def _stop(servers: list[tuple[str, subprocess.Popen]]) -> None:
    for _, proc in servers:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_server(
    repo: Path, root: Path, preexec_fn: Callable[[], None] | None = None, **env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Serve a copy of `repo` with data under `root`; yields (base URL, process).
    `preexec_fn` runs in the child before the server starts (e.g. to set a resource limit)."""
    server = _start(repo, root, env, preexec_fn)
    try:
        _wait_ready([server], [None])
        yield server
    finally:
        _stop([server])


@contextlib.contextmanager
def running_servers(
    repo: Path, root: Path, count: int, **env: str
) -> Iterator[list[tuple[str, subprocess.Popen]]]:
    """`count` servers with the same settings `env` (replicas: give them one
    CHEXRAY_DATABASE_URL), each with its own port, copy of `repo` and data folder under
    `root/<n>`, its output in `root/<n>/server.log`; started together, yielded once all are
    ready as [(base URL, process)]."""
    servers: list[tuple[str, subprocess.Popen]] = []
    logs: list[Path | None] = []
    try:
        for n in range(count):
            (root / str(n)).mkdir(parents=True)
            logs.append(root / str(n) / "server.log")
            servers.append(_start(repo, root / str(n), env, log=logs[-1]))
        _wait_ready(servers, logs)
        yield servers
    finally:
        _stop(servers)
