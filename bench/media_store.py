"""Where a study's files go: the media folder vs PostgreSQL (bytea rows, with and without
compression attempts, or large objects). One study is a 1 MB X-ray PNG and a 200 KB
heatmap PNG, written durably (the folder: write_atomic's fsyncs; PostgreSQL: one committed
transaction) and read back.

python bench/media_store.py --url postgresql://postgres@127.0.0.1:5432/postgres --dir /tmp/m

Run it against a cluster with fsync on (the test clusters run with fsync off).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.cam.render import encode_png, normalise, overlay
from server.store.media import MediaStore


def files(rng: np.random.Generator) -> dict[str, bytes]:
    """An X-ray-like grey PNG of about 1 MB and a colour heatmap PNG of about 200 KB."""
    yy, xx = np.mgrid[0:1024, 0:1024].astype(np.float32)
    smooth = 120 + 80 * np.sin(xx / 100) * np.cos(yy / 150)
    grey = np.clip(smooth + rng.normal(0, 24, smooth.shape), 0, 255).astype(np.uint8)
    image = encode_png(grey)
    small = grey[::3, ::3].copy()
    heatmap = encode_png(
        overlay(small, normalise(rng.normal(0, 1, (7, 7)).astype(np.float32)), 0.45)
    )
    return {"image.png": image, "heatmap.png": heatmap}


def timed(fn: Callable[[int], None], runs: int) -> float:
    times = []
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def chexray(url: str, data: dict[str, bytes], runs: int) -> tuple[float, float]:
    """The server's own path: DatabaseMedia.add_study (row and files, one transaction) and
    DatabaseMedia.read, on a fresh database beside the one given."""
    from server.store.db import Database
    from server.store.media_db import DatabaseMedia
    from server.store.models import Study

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_media")
        conn.execute("CREATE DATABASE bench_media")
    base = url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    db = Database(f"{base}/bench_media")
    db.create_all()
    media = DatabaseMedia(db)
    ids = [f"bench{i:017d}" for i in range(runs)]

    def study(i: int) -> Study:
        fields = dict(probabilities=[0.1] * 5, calls=[False] * 5, thresholds=[0.5] * 5)
        fields |= dict(cam_probabilities=[0.1] * 5, member_probabilities={}, cam_maps=[])
        fields |= dict(image_format="png", width=1024, height=1024, bit_depth=8, notes=[])
        return Study(id=ids[i], model_version="bench", trained=False, timings={}, **fields)

    def write(i: int) -> None:
        with db.session() as s:
            media.add_study(s, study(i), data)

    def read(i: int) -> None:
        for name in data:
            assert media.read(ids[i], name)

    try:
        return timed(write, runs), timed(read, runs)
    finally:
        db.dispose()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP DATABASE bench_media")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="a libpq URL of a database to use")
    p.add_argument("--dir", type=Path, required=True, help="a folder on the media disk")
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    data = files(np.random.default_rng(0))
    print({k: len(v) for k, v in data.items()})
    results: dict[str, tuple[float, float]] = {}

    shutil.rmtree(args.dir, ignore_errors=True)
    media = MediaStore(args.dir)

    def folder_write(i: int) -> None:
        for name, blob in data.items():
            media.write(f"study{i:020d}", name, blob, create=True)

    def folder_read(i: int) -> None:
        for name in data:
            assert media.read(f"study{i:020d}", name)

    results["folder (write_atomic, fsync)"] = (
        timed(folder_write, args.runs),
        timed(folder_read, args.runs),
    )
    shutil.rmtree(args.dir, ignore_errors=True)

    with psycopg.connect(args.url) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_bytea, bench_external, bench_lo")
        for table in ("bench_bytea", "bench_external"):
            conn.execute(
                f"CREATE TABLE {table} (study text, name text, data bytea, "
                "PRIMARY KEY (study, name))"
            )
        conn.execute("ALTER TABLE bench_external ALTER COLUMN data SET STORAGE EXTERNAL")
        conn.execute(
            "CREATE TABLE bench_lo (study text, name text, oid oid, PRIMARY KEY (study, name))"
        )
        conn.commit()

        def bytea(table: str) -> tuple[Callable[[int], None], Callable[[int], None]]:
            def write(i: int) -> None:
                with conn.transaction():
                    for name, blob in data.items():
                        conn.execute(
                            f"INSERT INTO {table} VALUES (%s, %s, %s)", (str(i), name, blob)
                        )

            def read(i: int) -> None:
                for name in data:
                    row = conn.execute(
                        f"SELECT data FROM {table} WHERE study = %s AND name = %s",
                        (str(i), name),
                        binary=True,
                    ).fetchone()
                    assert row and row[0]

            def read_text(i: int) -> None:
                for name in data:
                    row = conn.execute(
                        f"SELECT data FROM {table} WHERE study = %s AND name = %s", (str(i), name)
                    ).fetchone()
                    assert row and row[0]

            return write, read, read_text

        for label, table in (
            ("PostgreSQL bytea (default storage)", "bench_bytea"),
            ("PostgreSQL bytea (STORAGE EXTERNAL)", "bench_external"),
        ):
            write, read, read_text = bytea(table)
            results[label] = (timed(write, args.runs), timed(read, args.runs))
            results[label + ", read as text"] = (float("nan"), timed(read_text, args.runs))

        def lo_write(i: int) -> None:
            with conn.transaction():
                for name, blob in data.items():
                    conn.execute(
                        "INSERT INTO bench_lo VALUES (%s, %s, lo_from_bytea(0, %s))",
                        (str(i), name, blob),
                    )

        def lo_read(i: int) -> None:
            for name in data:
                row = conn.execute(
                    "SELECT lo_get(oid) FROM bench_lo WHERE study = %s AND name = %s",
                    (str(i), name),
                    binary=True,
                ).fetchone()
                assert row and row[0]

        results["PostgreSQL large objects"] = (
            timed(lo_write, args.runs),
            timed(lo_read, args.runs),
        )
        conn.execute("SELECT lo_unlink(oid) FROM bench_lo")
        conn.execute("DROP TABLE bench_bytea, bench_external, bench_lo")
        conn.commit()

    results["CheXray's database media store (SQLAlchemy, bytea EXTERNAL)"] = chexray(
        args.url, data, args.runs
    )

    print(f"| store | write a study (ms, median of {args.runs}) | read it back (ms) |")
    print("|---|---|---|")
    for label, (w, r) in results.items():
        print(f"| {label} | {'-' if w != w else f'{w:.1f}'} | {r:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
