"""Files of studies as rows of the database (table study_files, CHEXRAY_MEDIA_STORE=database):
the media store of replicas that share a PostgreSQL database and no volume.

The same interface as the folder's MediaStore (server/store/media.py), and the same names;
what differs is how consistency is kept. A new study's row and its files are inserted in
one transaction (`add_study`), so a study is whole or absent whatever fails or crashes,
with nothing for a sweep to repair. A file's foreign key ties it to its study: deleting the
study's row deletes its files in the same transaction (ON DELETE CASCADE, account deletion
included), and a file cannot be written for a study that is gone, so a heatmap drawn while
its study is deleted cannot bring it back. A full database answers 507 storage_full and
keeps nothing, like a full disk.

On PostgreSQL the bytea column is stored uncompressed (PNGs do not compress) and read in
psycopg's binary format, five times faster than as text for a 1 MB image
(bench/media_store.py; figures in README, Scaling out).
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection, exc, select, update
from sqlmodel import Session

from server.store.db import Database, database_errors
from server.store.media import FILE_NAME, STUDY_ID
from server.store.models import Study, StudyFile

TABLE = StudyFile.__table__
READ_SQL = "SELECT data FROM study_files WHERE study_id = %s AND name = %s"


def _check(study_id: str, name: str) -> None:
    if not STUDY_ID.match(study_id):
        raise ValueError("invalid study id")
    if not FILE_NAME.match(name):
        raise ValueError("invalid media name")


class DatabaseMedia:
    in_database = True

    def __init__(self, db: Database) -> None:
        self.db = db
        self._psycopg = db.engine.dialect.driver == "psycopg"

    @property
    def where(self) -> str:
        return "in the database (study_files)"

    def add_study(self, s: Session, study: Study, files: dict[str, bytes]) -> Study:
        """Insert the study's row and its files, and commit: all of it or none of it. No
        reading back afterwards (see studies.add_study)."""
        for name in files:
            _check(study.id, name)
        s.add(study)
        s.flush()  # the row before its files (their foreign key)
        s.add_all(
            StudyFile(study_id=study.id, name=name, data=data) for name, data in files.items()
        )
        s.commit()
        return study

    def write(self, study_id: str, name: str, data: bytes, create: bool = False) -> None:
        """Add or replace a file of a stored study (a heatmap drawn on demand);
        FileNotFoundError when the study is gone. `create` is refused: a new study's files
        come with its row (add_study)."""
        _check(study_id, name)
        if create:
            raise ValueError("a new study's files are added with its row: use add_study")
        where = (TABLE.c.study_id == study_id) & (TABLE.c.name == name)
        with database_errors():
            for _ in range(2):
                with self.db.engine.begin() as conn:
                    if conn.execute(update(TABLE).where(where).values(data=data)).rowcount:
                        return
                try:
                    with self.db.engine.begin() as conn:
                        conn.execute(TABLE.insert().values(study_id=study_id, name=name, data=data))
                    return
                except exc.IntegrityError:
                    # The study is gone (foreign key), or another request drew the same
                    # file a moment ago (primary key): replace that one, once.
                    continue
        raise FileNotFoundError(f"study {study_id} is gone")

    def read(self, study_id: str, name: str) -> bytes | None:
        _check(study_id, name)
        with database_errors(), self.db.engine.connect() as conn:
            if self._psycopg:
                return _read_binary(conn, study_id, name)
            return conn.execute(
                select(TABLE.c.data).where(TABLE.c.study_id == study_id, TABLE.c.name == name)
            ).scalar_one_or_none()

    def exists(self, study_id: str, name: str) -> bool:
        _check(study_id, name)
        with database_errors(), self.db.engine.connect() as conn:
            found = conn.execute(
                select(TABLE.c.name).where(TABLE.c.study_id == study_id, TABLE.c.name == name)
            ).first()
        return found is not None

    def delete_study(self, study_id: str) -> bool:
        """Nothing to do: the files went with the study's row (ON DELETE CASCADE)."""
        return True

    def study_folders(self) -> Iterator[str]:
        """No study's files can outlive its row here: nothing for the sweep to look at."""
        return iter(())


def _read_binary(conn: Connection, study_id: str, name: str) -> bytes | None:
    """The file in psycopg's binary result format (SQLAlchemy reads bytea as hex text);
    driver errors become SQLAlchemy's, which database_errors() understands."""
    import psycopg

    driver = conn.connection.driver_connection
    assert driver is not None
    try:
        row = driver.execute(READ_SQL, (study_id, name), binary=True).fetchone()
    except psycopg.Error as error:
        raise exc.DBAPIError.instance(READ_SQL, (study_id, name), error, psycopg.Error) from error
    return None if row is None else bytes(row[0])
