"""Storage faults at the real boundaries, against a real `chexray serve` process: a file
system with no room left (the process's RLIMIT_FSIZE), a crash that leaves half-written
studies behind (the start-up sweep), and PostgreSQL going away under load and coming back."""

from __future__ import annotations

import datetime as dt
import os
import resource
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlmodel import update

from server.store.db import Database
from server.store.models import Study
from tests.conftest import create_database
from tests.support.api import PASSWORD, post_image, register, xray
from tests.support.images import png
from tests.support.server_process import running_server

FILE_LIMIT = int(2.2 * 1024 * 1024)


def noise(side: int, seed: int = 0) -> bytes:
    """An X-ray-sized PNG that does not compress: its stored files are about as large."""
    return png(np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8))


def limit_file_size() -> None:
    """In the server process: no file may grow past FILE_LIMIT, and writing past it fails
    with EFBIG instead of killing the process (as it would on a full disk, with ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def studies_on_disk(data: Path) -> set[str]:
    media = data / "media"
    return {p.name for p in media.iterdir()} if media.is_dir() else set()


def study_rows(data: Path) -> set[str]:
    with sqlite3.connect(data / "chexray.db") as db:
        return {r[0] for r in db.execute("SELECT id FROM studies")}


def test_a_full_file_system_answers_507_and_keeps_no_part_of_the_study(
    tiny_repo: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with (
        running_server(
            tiny_repo,
            tmp_path,
            preexec_fn=limit_file_size,
            CHEXRAY_OPTIMIZED_CACHE="false",
        ) as (base, proc),
        httpx.Client(base_url=base, timeout=60) as h,
    ):
        kept = post_image(h, xray(), store="true")
        assert kept.status_code == 200, kept.text
        # 1200 x 1200: image.png (1.4 MB) fits, its heatmap (3 MB) does not; 2000 x 2000:
        # not even image.png does.
        for side in (1200, 2000):
            r = post_image(h, noise(side), store="true")
            assert r.status_code == 507, r.text
            assert r.json()["code"] == "storage_full"
            assert studies_on_disk(data) == {kept.json()["id"]} == study_rows(data)
            assert not list((data / "media").rglob(".*")), "no temporary file left"
        # A multipart file part over 1 MiB is spooled to a temporary file before any
        # analysis: with no room for it, the same 507, not a 500.
        big = noise(2000)
        assert len(big) > FILE_LIMIT
        r = h.post("/api/v1/predictions", files={"image": ("big.png", big, "image/png")})
        assert r.status_code == 507, r.text
        assert r.json()["code"] == "storage_full"
        # Unstored analyses need no room; the server is still up and well.
        assert post_image(h, noise(1200), heatmap="none").status_code == 200
        assert h.get("/health/ready").status_code == 200
        assert proc.poll() is None


def test_the_start_up_sweep_repairs_what_a_killed_server_left(
    tiny_repo: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with running_server(tiny_repo, tmp_path / "first", CHEXRAY_DATA_DIR=str(data)) as (
        base,
        proc,
    ):
        with httpx.Client(base_url=base, timeout=60) as h:
            auth = register(h, "alice")
            good, lost = (
                h.post(
                    "/api/v1/predictions",
                    headers=auth,
                    files={"image": ("x.png", xray(seed), "image/png")},
                ).json()["id"]
                for seed in (0, 1)
            )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # What a kill in the middle of writes leaves, an hour ago: the files of a study whose
    # row was never inserted, a temporary file of write_atomic, a row whose image file is
    # gone; and, just now, the folder of a study that another replica is writing.
    an_hour_ago = time.time() - 3600
    media = data / "media"
    orphan, young = media / "Orph4nOrph4nOrph4nOrph4", media / "Y0ungY0ungY0ungY0ungY0"
    for folder in (orphan, young):
        folder.mkdir()
        (folder / "image.png").write_bytes((media / good / "image.png").read_bytes())
    temporary = media / good / ".heatmap-edema.png.x7Hk2q"
    temporary.write_bytes(b"half a png")
    (media / lost / "image.png").unlink()
    for path in (orphan, orphan / "image.png", temporary):
        os.utime(path, (an_hour_ago, an_hour_ago))
    db = Database(f"sqlite:///{data / 'chexray.db'}")
    with db.session() as s:
        s.exec(
            update(Study)
            .where(Study.id == lost)
            .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        )
        s.commit()

    with running_server(
        tiny_repo,
        tmp_path / "second",
        CHEXRAY_DATA_DIR=str(data),
        CHEXRAY_ORPHAN_GRACE_MINUTES="10",
    ) as (base, _):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with db.session() as s:
                if s.get(Study, lost).files_missing_since is not None:
                    break
            time.sleep(0.1)
        with db.session() as s:
            assert s.get(Study, lost).files_missing_since is not None, "the sweep never ran"
        assert not orphan.exists() and not temporary.exists()
        assert young.exists(), "a folder younger than the grace is left alone"
        with httpx.Client(base_url=base, timeout=60) as h:
            token = h.post(
                "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
            ).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            history = h.get("/api/v1/studies", headers=auth).json()
            assert [s["id"] for s in history["items"]] == [good]
            assert h.get(f"/api/v1/studies/{lost}", headers=auth).status_code == 404
            assert h.get(f"/api/v1/studies/{good}/image", headers=auth).status_code == 200
    db.dispose()


class Load:
    """Signed-in clients reading their history and uploading, as fast as they can, each
    answer recorded with when its request started and ended."""

    def __init__(self, base: str, auth: dict[str, str], clients: int = 6) -> None:
        self.base, self.auth = base, auth
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[dict] = []
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]

    def run(self, n: int) -> None:
        with httpx.Client(base_url=self.base, timeout=60, headers=self.auth) as h:
            i = 0
            while not self.stop.is_set():
                i += 1
                start = time.monotonic()
                if i % 2:
                    kind, r = "list", h.get("/api/v1/studies", params={"per_page": 1})
                else:
                    kind, r = "upload", post_image(h, xray(seed=n * 1000 + i), heatmap="none")
                body = r.json()
                with self.lock:
                    self.answers.append(
                        {
                            "kind": kind,
                            "start": start,
                            "end": time.monotonic(),
                            "status": r.status_code,
                            "code": body.get("code"),
                            "retry_after": r.headers.get("retry-after"),
                            "id": body.get("id") if kind == "upload" else None,
                        }
                    )

    def wait_for(self, predicate, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.answers)):
                    return
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}: {Counter(a['status'] for a in self.answers)}")


def test_a_database_outage_answers_503_and_recovers_without_losing_a_study(
    tiny_repo: Path, tmp_path: Path, postgres_cluster
) -> None:
    url = create_database(postgres_cluster.url, "chexray")
    data = tmp_path / "data"
    with running_server(tiny_repo, tmp_path, CHEXRAY_DATABASE_URL=url) as (base, proc):
        with httpx.Client(base_url=base, timeout=60) as h:
            auth = register(h, "alice")
        load = Load(base, auth)
        for t in load.threads:
            t.start()
        try:
            load.wait_for(
                lambda a: sum(x["status"] == 200 and x["kind"] == "upload" for x in a) >= 5,
                "uploads before the outage",
            )
            postgres_cluster.stop("fast")
            down = time.monotonic()
            load.wait_for(lambda a: sum(x["start"] > down for x in a) >= 20, "answers while down")
            with httpx.Client(base_url=base, timeout=60) as h:
                ready = h.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
            up = time.monotonic()
            postgres_cluster.start()
            load.wait_for(
                lambda a: (
                    sum(x["start"] > up and x["status"] == 200 and x["kind"] == "upload" for x in a)
                    >= 5
                ),
                "uploads after the restart",
            )
        finally:
            load.stop.set()
            for t in load.threads:
                t.join(60)
        answers = load.answers
        assert {a["status"] for a in answers} == {200, 503}, Counter(a["status"] for a in answers)
        during = [a for a in answers if a["start"] > down and a["end"] < up]
        assert during and all(
            a["status"] == 503 and a["code"] == "database_unavailable" and a["retry_after"]
            for a in during
        )
        # Every study whose upload was answered 200 is there, with its image; no files of
        # a failed upload remain, and no row lost its files.
        stored = {a["id"] for a in answers if a["kind"] == "upload" and a["status"] == 200}
        with httpx.Client(base_url=base, timeout=60, headers=auth) as h:
            assert h.get("/health/ready").status_code == 200
            listed, page = [], 1
            while True:
                body = h.get("/api/v1/studies", params={"per_page": 100, "page": page}).json()
                listed += [s["id"] for s in body["items"]]
                if page >= body["pages"]:
                    break
                page += 1
            assert sorted(listed) == sorted(stored)
            for study_id in sorted(stored)[:10]:
                assert h.get(f"/api/v1/studies/{study_id}/image").status_code == 200
        assert studies_on_disk(data) == stored
        assert proc.poll() is None
