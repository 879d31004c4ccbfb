"""What every layer shares: the framework block, the layer markers, a throwaway PostgreSQL
server, a fresh database of each kind, a real Orthanc as the PACS, and the tiny model
repository built in code (tests/support/tiny_repo.py) for the integration and e2e layers.
The converter's own repository is tests/convert's.

CHEXRAY_TEST_NO_FRAMEWORKS=1 (`make test-fast`) makes tensorflow, torch, keras, tf_keras and
tf2onnx unimportable here and in every Python child process (tests/support/no_frameworks.py),
so a layer that needs none of them proves it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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


class PostgresCluster:
    """A throwaway PostgreSQL cluster on a free local port that a test may stop and start
    again (same port, same data), e.g. to see the server through a database outage.

    initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
    """

    def __init__(self, root: Path) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip("PostgreSQL is not installed (scripts/ensure-test-deps.sh installs it)")
        self.root, self.data, self.pg_ctl = root, root / "data", pg_ctl
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chmod(root, 0o777)
            self._let_postgres_in()
            os.chown(root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"
        subprocess.run(
            [
                *self.as_user,
                initdb,
                "-D",
                str(self.data),
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
        self.start()

    def _let_postgres_in(self) -> None:
        """Let the postgres user traverse to the cluster. Again before each pg_ctl: a pytest
        session starting meanwhile makes /tmp/pytest-of-<user> private again."""
        for p in self.root.parents:
            if p == Path("/"):
                break
            os.chmod(p, os.stat(p).st_mode | 0o011)

    def _ctl(self, *args: str, check: bool = True) -> None:
        if self.as_user:
            self._let_postgres_in()
        done = subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.data), *args],
            capture_output=True,
            text=True,
        )
        if check and done.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)}: {done.stdout}{done.stderr}\n{tail}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", opts, "-w", "-l", str(self.root / "log"), "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: disconnect clients, roll back what is open, shut down cleanly;
        `immediate`: as if the server crashed (recovery on the next start)."""
        self._ctl("-m", mode, "-w", "stop")

    def remove(self) -> None:
        self._ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _cluster_dir() -> Path:
    """A folder for a cluster outside pytest's base folder: a pytest session starting on
    the same machine makes /tmp/pytest-of-<user> private again, which would lock the
    postgres user out of a cluster inside it."""
    return Path(tempfile.mkdtemp(prefix="chexray-pg-"))


class PostgresUrl(str):
    """The shared cluster's URL (a str, as the fixture always gave), with the cluster."""

    cluster: PostgresCluster


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster shared by the session: its URL (without a database
    name), removed afterwards. Tests that stop the server use `postgres_cluster`."""
    cluster = PostgresCluster(_cluster_dir())
    url = PostgresUrl(cluster.url)
    url.cluster = cluster
    try:
        yield url
    finally:
        cluster.remove()


@pytest.fixture
def postgres_cluster():
    """A PostgreSQL cluster of the test's own, which it may stop and start."""
    cluster = PostgresCluster(_cluster_dir())
    try:
        yield cluster
    finally:
        cluster.remove()


def create_database(server_url: str, name: str) -> str:
    """A new database on a cluster; its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(
        server_url.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True
    ) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"


_DB_COUNTER = iter(range(10**6))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chexray.db'}"
    server = request.getfixturevalue("postgres")
    return create_database(server, f"chexray_test_{next(_DB_COUNTER)}")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc with its DICOMweb plugin (tests/support/orthanc.py), shared by the
    session: tests keep to studies of their own. Skips where Orthanc is not installed."""
    from tests.support.orthanc import OrthancServer, missing

    reason = missing()
    if reason:
        pytest.skip(reason)
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
