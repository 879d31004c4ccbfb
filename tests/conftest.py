"""Shared fixtures: the tiny model repository, built once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convert.pipeline import convert_repository

    out = tmp_path_factory.mktemp("tiny_repo")
    convert_repository("tiny", out, log=lambda _: None)
    return out


@pytest.fixture
def tiny_copy(tiny_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny repository that a test may change."""
    out = tmp_path / "repo"
    shutil.copytree(tiny_repo, out)
    return out


def make_keras_files(mode: str, out: Path) -> Path:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support" / "make_keras_files.py"), mode, str(out)],
        check=True,
        env=env,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def keras3_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keras_files("keras3", tmp_path_factory.mktemp("keras3"))


@pytest.fixture(scope="session")
def legacy_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keras_files("legacy", tmp_path_factory.mktemp("legacy"))


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway PostgreSQL cluster on a free local port, removed afterwards.

    initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
    """
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (scripts/ensure-test-deps.sh installs it)")
    root = tmp_path_factory.mktemp("pg")
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chmod(root, 0o777)
        for p in (root, *root.parents):
            if p == Path("/"):
                break
            os.chmod(p, os.stat(p).st_mode | 0o011)  # let the postgres user traverse
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [
            *as_user,
            initdb,
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-w", "-l", str(root / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


_DB_COUNTER = iter(range(10**6))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chexray.db'}"
    server = request.getfixturevalue("postgres")
    import psycopg

    name = f"chexray_test_{next(_DB_COUNTER)}"
    with psycopg.connect(
        server.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True
    ) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"
