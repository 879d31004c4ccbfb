"""Anonymous stored studies: deleted by their uploader's one-time secret, expired after
CHEXRAY_ANONYMOUS_TTL_HOURS, limited in number; and a heatmap drawn for a study that is
deleted meanwhile."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from pathlib import Path

import pytest
from sqlmodel import update

from server.store.models import Study
from tests.support.api import client, error, post_image, register, upload, xray


@pytest.fixture
def c(tiny_repo: Path, tmp_path: Path, database_url: str):
    with client(tiny_repo, tmp_path, database_url) as c:
        yield c


def study_row(c, study_id: str) -> Study | None:
    with c.app.state.service.store.db.session() as s:
        return s.get(Study, study_id)


def make_older(c, study_id: str, hours: float) -> None:
    with c.app.state.service.store.db.session() as s:
        old = s.get(Study, study_id).created_at - dt.timedelta(hours=hours)
        s.exec(update(Study).where(Study.id == study_id).values(created_at=old))
        s.commit()


def test_the_uploader_deletes_an_anonymous_study_with_its_secret(c, tmp_path: Path) -> None:
    body = upload(c, store="true")
    sid, secret = body["id"], body["delete_token"]
    assert body["stored"] and len(secret) >= 40
    created = dt.datetime.fromisoformat(body["created_at"])
    assert dt.datetime.fromisoformat(body["expires_at"]) - created == dt.timedelta(hours=24)
    # Only its hash is kept, and it is never shown again.
    assert study_row(c, sid).delete_token_hash == hashlib.sha256(secret.encode()).hexdigest()
    again = c.get(f"/api/v1/studies/{sid}").json()
    assert again["delete_token"] is None and again["expires_at"] == body["expires_at"]

    error(c.delete(f"/api/v1/studies/{sid}"), 401, "not_authenticated")
    error(c.delete(f"/api/v1/studies/{sid}", headers={"X-Delete-Token": "guess"}), 404, "not_found")
    someone = register(c, "someone")
    error(c.delete(f"/api/v1/studies/{sid}", headers=someone), 404, "not_found")
    assert (tmp_path / "media" / sid / "image.png").is_file()

    assert c.delete(f"/api/v1/studies/{sid}", headers={"X-Delete-Token": secret}).status_code == 204
    assert not (tmp_path / "media" / sid).exists() and study_row(c, sid) is None
    error(c.get(f"/api/v1/studies/{sid}"), 404, "not_found")
    error(c.delete(f"/api/v1/studies/{sid}", headers={"X-Delete-Token": secret}), 404, "not_found")


def test_a_secret_deletes_only_its_own_anonymous_study(c) -> None:
    first, second = upload(c, store="true"), upload(c, seed=1, store="true")
    alice = register(c, "alice")
    owned = upload(c, alice, seed=2)
    assert owned["delete_token"] is None and owned["expires_at"] is None
    for victim in (second["id"], owned["id"]):
        r = c.delete(f"/api/v1/studies/{victim}", headers={"X-Delete-Token": first["delete_token"]})
        error(r, 404, "not_found")
    assert c.get(f"/api/v1/studies/{second['id']}").status_code == 200
    assert c.get(f"/api/v1/studies/{owned['id']}", headers=alice).status_code == 200


def test_the_legacy_anonymous_upload_returns_its_secret_too(c, tmp_path: Path) -> None:
    r = c.post(
        "/api/chexray/anonupload/",
        files={"image": ("x.png", xray(), "image/png")},
        data={"title": "anon"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["userperson"] is None and body["delete_token"] and body["expires_at"]
    # Signed-in uploads answer exactly the legacy fields, as before.
    alice = register(c, "alice")
    r = c.post(
        "/api/chexray/upload/",
        files={"image": ("x.png", xray(1), "image/png")},
        data={"title": "mine"},
        headers=alice,
    )
    assert "delete_token" not in r.json() and "expires_at" not in r.json()
    r = c.delete(f"/api/v1/studies/{body['id']}", headers={"X-Delete-Token": body["delete_token"]})
    assert r.status_code == 204 and not (tmp_path / "media" / body["id"]).exists()


def test_an_expired_anonymous_study_answers_404(c) -> None:
    body = upload(c, store="true")
    make_older(c, body["id"], 25)
    for url in (body["urls"]["study"], body["urls"]["image"], body["urls"]["heatmap"]):
        error(c.get(url), 404, "not_found")
    error(c.get(f"/media/{body['id']}/image.png"), 404, "not_found")


def test_the_periodic_sweep_deletes_expired_anonymous_studies(
    tiny_repo: Path, tmp_path: Path
) -> None:
    with client(tiny_repo, tmp_path, sweep_interval_minutes=0.005) as c:
        expired, kept = upload(c, store="true"), upload(c, seed=1, store="true")
        make_older(c, expired["id"], 25)
        folder = tmp_path / "media" / expired["id"]
        deadline = time.monotonic() + 30
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not folder.exists() and study_row(c, expired["id"]) is None
        assert c.get(kept["urls"]["study"]).status_code == 200


def test_anonymous_studies_are_limited_in_number(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path, anonymous_max_studies=2) as c:
        first = upload(c, store="true")
        upload(c, seed=1, store="true")
        body = error(post_image(c, xray(2), store="true"), 507, "anonymous_storage_full")
        assert "sign in" in body["message"]
        # Analyses that keep nothing, and signed-in ones, are not limited by it.
        assert post_image(c, xray(2)).status_code == 200
        upload(c, register(c, "alice"), seed=3)
        # Deleting one makes room.
        r = c.delete(first["urls"]["study"], headers={"X-Delete-Token": first["delete_token"]})
        assert r.status_code == 204
        assert post_image(c, xray(2), store="true").status_code == 200
        assert len(list((tmp_path / "media").iterdir())) == 3


def test_anonymous_studies_are_limited_per_client_address(
    tiny_repo: Path, tmp_path: Path, database_url: str
) -> None:
    """Counted in memory on SQLite, in the database on PostgreSQL (CHEXRAY_LIMITS_STORE=auto)."""
    with client(tiny_repo, tmp_path, database_url, anonymous_hourly_per_address=2) as c:
        shared = database_url.startswith("postgresql")
        assert type(c.app.state.service.counts).__name__ == (
            "DatabaseCounts" if shared else "MemoryCounts"
        )
        # What fails is not counted.
        error(post_image(c, b"not an image", store="true"), 415, "unsupported_format")
        upload(c, store="true")
        upload(c, seed=1, store="true")
        r = post_image(c, xray(2), store="true")
        error(r, 429, "anonymous_quota_exceeded")
        assert 1 <= int(r.headers["retry-after"]) <= 3600
        assert post_image(c, xray(2)).status_code == 200


def test_a_heatmap_drawn_for_a_study_deleted_meanwhile_leaves_no_folder(c, tmp_path: Path) -> None:
    alice = register(c, "alice")
    body = upload(c, alice)
    sid = body["id"]
    service = c.app.state.service
    user_id = c.get("/api/v1/me", headers=alice).json()["id"]
    draw = service.renderer.heatmap

    async def deleted_while_drawing(*args, **kwargs):
        await service.predictions.delete(sid, user_id)  # the owner deletes it meanwhile
        return await draw(*args, **kwargs)

    service.renderer.heatmap = deleted_while_drawing
    try:
        error(c.get(body["urls"]["heatmaps"]["Edema"], headers=alice), 404, "not_found")
    finally:
        service.renderer.heatmap = draw
    assert not (tmp_path / "media" / sid).exists()
