"""`chexray serve`: settings, model repository, logging, then the ASGI server."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

from server.runtime.backends import ChoiceError, choose
from server.runtime.manifest import MANIFEST_NAME, RepositoryError
from server.runtime.precision import refusal
from server.runtime.repository import verify_repository
from server.settings import Settings, SettingsError


def serve(overrides: dict[str, object], preset: str = "default", build: bool = True) -> int:
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        print(f"chexray serve: {exc}")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not (settings.model_dir / MANIFEST_NAME).is_file():
        if not build:
            print(f"chexray serve: no model repository in {settings.model_dir}")
            return 2
        print(f"No model repository in {settings.model_dir}: building the '{preset}' preset.")
        # The converter runs in its own process: the server never imports it.
        cmd = [
            sys.executable,
            "-m",
            "chexray.cli",
            "convert",
            "--preset",
            preset,
            "--out",
            str(settings.model_dir),
        ]
        if subprocess.run(cmd).returncode != 0:
            return 2
    try:
        manifest = verify_repository(settings.model_dir)
        choice = choose(settings, manifest)
    except (RepositoryError, ChoiceError) as exc:
        print(f"chexray serve: {exc}")
        return 2
    check = manifest.precision_checks.get(choice.label)
    if check is not None and not check.passed:
        print(f"chexray serve: {refusal(check)}")
        return 2

    problem = _grpc_port_problem(settings)
    if problem is not None:
        print(f"chexray serve: {problem}")
        return 2

    import uvicorn

    from server.app import create_app
    from server.http_server import DrainingServer

    try:
        app = create_app(settings, manifest)
    except RuntimeError as exc:  # e.g. tracing asked for without OpenTelemetry installed
        print(f"chexray serve: {exc}")
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Forwarding headers are the app's to judge, against CHEXRAY_TRUSTED_PROXIES
        # (server/api/middleware.py); uvicorn's own would trust 127.0.0.1 unasked.
        proxy_headers=False,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=30,
    )
    DrainingServer(config, app.state.service, settings.drain_timeout_s).run()
    return 0


def _grpc_port_problem(settings: Settings) -> str | None:
    """Why the gRPC port cannot be had, checked before start-up so that a taken port is one
    line, not a failed start-up's traceback (the server binds it again at start)."""
    if not settings.grpc_port:
        return None
    host = settings.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, settings.grpc_port))
        except OSError as exc:
            return (
                f"cannot listen for gRPC on {host}:{settings.grpc_port} (CHEXRAY_GRPC_PORT; "
                f"0 turns gRPC off): {exc.strerror or exc}"
            )
    return None
