"""The database: a SQLite file by default, any SQLAlchemy URL (PostgreSQL tested).

Blocking: `server.store.store.Store` runs it in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import event, exc, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from server.errors import InsufficientStorage, Unavailable
from server.store import models  # noqa: F401  (registers the tables)

log = logging.getLogger("chexray.store")

RETRY_AFTER_S = 5.0
DISK_FULL_SQLSTATE = "53100"  # PostgreSQL's disk_full
SCHEMA_LOCK_ID = 0x43686558  # "CheX": the advisory lock of schema changes


class Throttled:
    """Log a recurring condition (every request of an outage fails alike) at warning at
    most once per `interval_s`, and at debug in between, so an outage cannot flood the log."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last = -interval_s
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            due = now - self._last >= self.interval_s
            if due:
                self._last = now
        log.log(logging.WARNING if due else logging.DEBUG, msg, *args)


outage_log = Throttled()


def storage_full() -> InsufficientStorage:
    return InsufficientStorage(
        "storage_full",
        "the server has no room left to keep this study; nothing was kept. Retry later, or "
        "analyse without keeping it",
    )


def _disk_full(error: exc.DBAPIError) -> bool:
    orig = error.orig
    return (
        getattr(orig, "sqlstate", None) == DISK_FULL_SQLSTATE
        or getattr(orig, "sqlite_errorname", None) == "SQLITE_FULL"
    )


def _unreachable(error: Exception) -> bool:
    """A failure of the database server or of the connection to it, not of the statement:
    connection refused or lost, the server shutting down, a busy SQLite file, no pooled
    connection free in time."""
    if isinstance(error, exc.TimeoutError | exc.DisconnectionError):
        return True
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, exc.OperationalError | exc.InterfaceError
        )
    return False


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Turn an unreachable database into `Unavailable` (503, with Retry-After) and a full
    one into `InsufficientStorage`; any other database error stays a bug."""
    try:
        yield
    except exc.DBAPIError as error:
        if _disk_full(error):
            log.error("the database is out of space: %s", error.orig)
            raise storage_full() from error
        if not _unreachable(error):
            raise
        outage_log.warning("database unavailable: %s", _first_line(error.orig))
        raise _unavailable() from error
    except (exc.TimeoutError, exc.DisconnectionError) as error:
        outage_log.warning("database unavailable: %s", _first_line(error))
        raise _unavailable() from error


def _first_line(error: object) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def _unavailable() -> Unavailable:
    return Unavailable(
        "database_unavailable",
        "the database is unreachable or busy; retry shortly",
        retry_after=RETRY_AFTER_S,
    )


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:  # WAL: readers never block the writer
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # pre-ping: after a database restart, pooled connections are found dead and replaced
    # instead of failing the next requests; connect_timeout: an unreachable server answers
    # 503 within seconds rather than hanging requests.
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=connect_args
    )


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def create_all(self) -> None:
        """Create missing tables, and add nullable columns that newer versions of a table
        have to an older database (no data is changed). One transaction; on PostgreSQL
        under an advisory lock, so that replicas starting together on an empty database
        take turns instead of racing to create the same tables."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK_ID})
            SQLModel.metadata.create_all(conn)
            existing = inspect(conn)
            for table in SQLModel.metadata.sorted_tables:
                have = {c["name"] for c in existing.get_columns(table.name)}
                for column in table.columns:
                    if column.name in have or not column.nullable:
                        continue
                    kind = column.type.compile(dialect=self.engine.dialect)
                    conn.execute(
                        text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                    )

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs."""
        return self.engine.url.render_as_string(hide_password=True)
