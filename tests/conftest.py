"""What every layer shares: the framework block, the layer markers, a throwaway PostgreSQL
server, a fresh database of each kind, and the tiny model repository built in code
(tests/support/tiny_repo.py) for the integration and e2e layers. The converter's own
repository is tests/convert's.

CHEXRAY_TEST_NO_FRAMEWORKS=1 (`make test-fast`) makes tensorflow, torch, keras, tf_keras and
tf2onnx unimportable here and in every Python child process (tests/support/no_frameworks.py),
so a layer that needs none of them proves it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support import no_frameworks

if no_frameworks.requested():
    no_frameworks.install()
    os.environ["PYTHONPATH"] = no_frameworks.child_pythonpath()

import pytest

from tests.support.server_process import free_port

TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "integration", "e2e", "convert")
SKIP_CONVERT = f"needs TensorFlow and torch: unset {no_frameworks.VARIABLE}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its layer (its folder), so `-m` can pick layers too; under
    the framework block the converter's layer cannot run and is skipped, saying why."""
    blocked = no_frameworks.requested()
    for item in items:
        parts = item.path.relative_to(TESTS).parts
        if len(parts) > 1 and parts[0] in LAYERS:
            item.add_marker(parts[0])
            if blocked and parts[0] == "convert":
                item.add_marker(pytest.mark.skip(reason=SKIP_CONVERT))


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model repository, made with onnx alone (no TensorFlow, no torch)."""
    from tests.support.tiny_repo import build_tiny_repo

    out = tmp_path_factory.mktemp("tiny_repo")
    build_tiny_repo(out)
    return out


@pytest.fixture
def tiny_copy(tiny_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny repository that a test may change."""
    out = tmp_path / "repo"
    shutil.copytree(tiny_repo, out)
    return out


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


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
