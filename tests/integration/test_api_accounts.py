"""Accounts and history against SQLite and a real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.store.db import Database
from server.store.models import Study
from tests.support.api import PASSWORD, client, error, register, upload


@pytest.fixture
def c(tiny_repo: Path, tmp_path: Path, database_url: str):
    with client(tiny_repo, tmp_path, database_url) as c:
        c.database_url = database_url
        yield c


def test_register_validation(c) -> None:
    def reg(**kw):
        body = {
            "username": "alice",
            "email": "alice@example.org",
            "password": PASSWORD,
            "password2": PASSWORD,
            **kw,
        }
        return c.post("/api/v1/auth/register", json=body)

    error(reg(password2="something else!"), 422, "password_mismatch")
    body = error(reg(password="short", password2="short"), 422, "weak_password")
    assert body["detail"]["problems"] == ["must be at least 10 characters"]
    error(
        reg(username="alice.long", password="alice.long", password2="alice.long"),
        422,
        "weak_password",
    )
    error(reg(username="bad name!"), 400, "invalid_request")
    error(reg(email="not-an-email"), 400, "invalid_request")
    error(c.post("/api/v1/auth/register", json={"username": "x"}), 400, "invalid_request")
    r = reg(full_name="Alice Liddell")
    assert r.status_code == 201 and r.json()["full_name"] == "Alice Liddell"
    assert "password" not in r.text and "hash" not in r.text
    error(reg(), 409, "username_taken")


def test_login_profile_logout(c) -> None:
    h = register(c, "alice")
    error(
        c.post("/api/v1/auth/login", json={"username": "alice", "password": "wrong password"}),
        401,
        "invalid_credentials",
    )
    error(
        c.post("/api/v1/auth/login", json={"username": "nobody", "password": PASSWORD}),
        401,
        "invalid_credentials",
    )
    me = c.get("/api/v1/me", headers=h).json()
    assert (me["username"], me["email"], me["study_count"]) == ("alice", "alice@example.org", 0)
    r = c.patch("/api/v1/me", headers=h, json={"full_name": "Alice L.", "email": "al@example.org"})
    assert r.json()["full_name"] == "Alice L." and r.json()["email"] == "al@example.org"
    error(c.patch("/api/v1/me", headers=h, json={"username": "eve"}), 400, "invalid_request")
    error(c.get("/api/v1/me"), 401, "not_authenticated")
    error(c.get("/api/v1/me", headers={"Authorization": "Bearer nonsense"}), 401, "invalid_token")
    error(c.get("/api/v1/me", headers={"Authorization": "Basic abc"}), 401, "invalid_credentials")
    assert c.post("/api/v1/auth/logout", headers=h).status_code == 204
    error(c.get("/api/v1/me", headers=h), 401, "invalid_token")


def test_password_change_revokes_other_tokens(c) -> None:
    h1 = register(c, "alice")
    h2 = {
        "Authorization": "Bearer "
        + c.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}).json()[
            "token"
        ]
    }
    new = "a much better passphrase"
    change = {"current_password": PASSWORD, "new_password": new, "new_password2": new}
    error(
        c.post("/api/v1/me/password", headers=h1, json={**change, "current_password": "nope"}),
        401,
        "invalid_credentials",
    )
    error(
        c.post("/api/v1/me/password", headers=h1, json={**change, "new_password2": "x"}),
        422,
        "password_mismatch",
    )
    r = c.post("/api/v1/me/password", headers=h1, json=change)
    assert r.status_code == 200 and r.json()["revoked_tokens"] == 1
    assert c.get("/api/v1/me", headers=h1).status_code == 200
    error(c.get("/api/v1/me", headers=h2), 401, "invalid_token")
    error(
        c.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}),
        401,
        "invalid_credentials",
    )
    assert (
        c.post("/api/v1/auth/login", json={"username": "alice", "password": new}).status_code == 200
    )


def test_history_pages_filters_and_owner_only_access(c) -> None:
    alice, bob = register(c, "alice"), register(c, "bob")
    ids = [upload(c, alice, seed=i)["id"] for i in range(3)]
    bob_study = upload(c, bob, seed=9)["id"]
    page1 = c.get("/api/v1/studies", headers=alice, params={"per_page": 2}).json()
    assert (page1["total"], page1["pages"], len(page1["items"])) == (3, 2, 2)
    page2 = c.get("/api/v1/studies", headers=alice, params={"per_page": 2, "page": 2}).json()
    listed = [s["id"] for s in page1["items"] + page2["items"]]
    assert listed == ids[::-1], "newest first"
    assert bob_study not in listed

    # Filter by a finding called present: mark one study as having Edema only.
    db = Database(c.database_url or "")
    with db.session() as s:
        study = s.get(Study, ids[0])
        study.calls = [False, False, False, True, False]
        study.present = "|Edema|"
        s.add(study)
        others = [s.get(Study, i) for i in ids[1:]]
        for o in others:
            o.calls = [True, False, False, False, False]
            o.present = "|Atelectasis|"
            s.add(o)
        s.commit()
    db.dispose()
    edema = c.get("/api/v1/studies", headers=alice, params={"finding": "edema"}).json()
    assert [s["id"] for s in edema["items"]] == [ids[0]] and edema["items"][0]["present"] == [
        "Edema"
    ]
    error(
        c.get("/api/v1/studies", headers=alice, params={"finding": "fracture"}),
        404,
        "unknown_finding",
    )
    error(
        c.get("/api/v1/studies", headers=alice, params={"per_page": 1000}), 400, "invalid_request"
    )
    error(c.get("/api/v1/studies"), 401, "not_authenticated")

    # Bob sees none of Alice's study, its files or its heatmaps: 404, as if it did not exist.
    for path in ("", "/image", "/heatmap", "/heatmap/edema"):
        error(c.get(f"/api/v1/studies/{ids[1]}{path}", headers=bob), 404, "not_found")
        error(c.get(f"/api/v1/studies/{ids[1]}{path}"), 404, "not_found")
    error(c.get(f"/media/{ids[1]}/image.png", headers=bob), 404, "not_found")
    error(c.delete(f"/api/v1/studies/{ids[1]}", headers=bob), 404, "not_found")
    assert c.get(f"/api/v1/studies/{ids[1]}", headers=alice).status_code == 200
    assert (
        c.get(f"/api/v1/studies/{ids[1]}/heatmap/pleural_effusion", headers=alice).status_code
        == 200
    )
    error(
        c.get(f"/api/v1/studies/{ids[1]}/heatmap/fracture", headers=alice), 404, "unknown_finding"
    )

    assert c.delete(f"/api/v1/studies/{ids[1]}", headers=alice).status_code == 204
    error(c.get(f"/api/v1/studies/{ids[1]}", headers=alice), 404, "not_found")
    assert c.get("/api/v1/me", headers=alice).json()["study_count"] == 2


def test_deleting_the_account_removes_studies_and_files(c, tmp_path: Path) -> None:
    alice = register(c, "alice")
    sid = upload(c, alice)["id"]
    assert (tmp_path / "media" / sid / "image.png").is_file()
    assert c.delete("/api/v1/me", headers=alice).status_code == 204
    assert not (tmp_path / "media" / sid).exists()
    error(c.get("/api/v1/me", headers=alice), 401, "invalid_token")
    error(
        c.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}),
        401,
        "invalid_credentials",
    )
    # The name is free again.
    register(c, "alice")
