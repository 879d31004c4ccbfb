"""Replicas starting together on an empty PostgreSQL database each create the schema at
start-up (Database.create_all): they take turns, and every one of them starts."""

from __future__ import annotations

import threading

from sqlalchemy import inspect
from sqlmodel import SQLModel

from server.store.db import Database
from tests.conftest import create_database

_NAMES = iter(range(10**6))


def test_replicas_creating_the_schema_at_once_all_start(postgres) -> None:
    url = create_database(postgres, f"chexray_schema_{next(_NAMES)}")
    databases = [Database(url) for _ in range(6)]
    go = threading.Barrier(len(databases))
    errors: list[BaseException] = []

    def start(db: Database) -> None:
        go.wait()
        try:
            db.create_all()
        except BaseException as exc:  # what a replica's start-up would die of
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in databases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        tables = set(inspect(databases[0].engine).get_table_names())
        assert set(SQLModel.metadata.tables) <= tables
    finally:
        for db in databases:
            db.dispose()
