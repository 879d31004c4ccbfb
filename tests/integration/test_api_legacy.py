"""The legacy application's endpoints under /api/chexray/: same fields, safer answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import PASSWORD, client, error, xray

LEGACY_FIELDS = {
    "id",
    "title",
    "image",
    "date_posted",
    "userperson",
    "heatmap_image",
    "newcomp_image",
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "edema",
    "pleural_effusion",
}


@pytest.fixture
def c(tiny_repo: Path, tmp_path: Path, database_url: str):
    with client(tiny_repo, tmp_path, database_url) as c:
        yield c


def signup(c, username: str) -> dict[str, str]:
    r = c.post(
        "/api/chexray/signup/",
        json={"username": username, "password": PASSWORD, "password2": PASSWORD},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {
        "response": "Successfully registered a new user.",
        "username": username,
        "token": body["token"],
    }
    return {"Authorization": f"Token {body['token']}"}


def test_legacy_flow(c) -> None:
    alice = signup(c, "alice")
    r = c.post("/api/chexray/login/", json={"username": "alice", "password": PASSWORD})
    assert set(r.json()) == {"userid", "username", "token"} and r.json()["username"] == "alice"
    up = c.post(
        "/api/chexray/upload/",
        headers=alice,
        files={"image": ("x.png", xray(1), "image/png")},
        data={"title": "first"},
    )
    assert up.status_code == 200, up.text
    x = up.json()
    assert (
        set(x) == LEGACY_FIELDS and x["title"] == "first" and x["userperson"] == r.json()["userid"]
    )
    assert all(
        x[k] in (0.0, 1.0)
        for k in ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion")
    )
    for field in ("image", "heatmap_image", "newcomp_image"):
        assert x[field].startswith("/media/")
        media = c.get(x[field], headers=alice)
        assert media.status_code == 200 and media.headers["content-type"] == "image/png"
    second = c.post(
        "/api/chexray/upload/",
        headers=alice,
        files={"image": ("y.png", xray(2), "image/png")},
        data={"title": "second"},
    ).json()
    user = c.get("/api/chexray/user/", headers=alice).json()
    assert user["username"] == "alice"
    assert [p["id"] for p in user["pastxrays"]] == [second["id"], x["id"]], "newest first"
    detail = c.post("/api/chexray/xray/", headers=alice, json={"xray_id": x["id"]})
    assert detail.status_code == 200 and detail.json() == x

    # Where the legacy application answered 200 for anyone, CheXray answers 404 to other users.
    bob = signup(c, "bob")
    error(c.post("/api/chexray/xray/", headers=bob, json={"xray_id": x["id"]}), 404, "not_found")
    error(c.get(x["image"], headers=bob), 404, "not_found")
    error(c.post("/api/chexray/xray/", json={"xray_id": x["id"]}), 401, "not_authenticated")
    error(c.get("/api/chexray/user/"), 401, "not_authenticated")
    error(
        c.post("/api/chexray/upload/", files={"image": ("x.png", xray(), "image/png")}),
        401,
        "not_authenticated",
    )


def test_legacy_errors_are_4xx(c) -> None:
    r = c.post(
        "/api/chexray/signup/",
        json={"username": "carol", "password": PASSWORD, "password2": PASSWORD + "!"},
    )
    error(r, 422, "password_mismatch")  # the legacy application answered 200 with an error text
    signup(c, "carol")
    error(
        c.post(
            "/api/chexray/signup/",
            json={"username": "carol", "password": PASSWORD, "password2": PASSWORD},
        ),
        409,
        "username_taken",
    )
    error(
        c.post("/api/chexray/login/", json={"username": "carol", "password": "wrong one!!"}),
        401,
        "invalid_credentials",
    )
    error(
        c.post("/api/chexray/anonupload/", files={"image": ("x.png", b"text", "image/png")}),
        415,
        "unsupported_format",
    )


@pytest.mark.parametrize("username", ["x" * 300, "", "with space", "nul\x00byte"])
def test_legacy_signup_keeps_the_username_rules(c, username: str) -> None:
    r = c.post(
        "/api/chexray/signup/",
        json={"username": username, "password": PASSWORD, "password2": PASSWORD},
    )
    error(r, 400, "invalid_request")


def test_legacy_login_fields_are_bounded(c) -> None:
    r = c.post("/api/chexray/login/", json={"username": "u" * 151, "password": PASSWORD})
    error(r, 400, "invalid_request")
    r = c.post("/api/chexray/login/", json={"username": "u", "password": "p" * 1025})
    error(r, 400, "invalid_request")


def test_anonymous_upload_belongs_to_nobody(c) -> None:
    r = c.post(
        "/api/chexray/anonupload/",
        files={"image": ("x.png", xray(), "image/png")},
        data={"title": "anon"},
    )
    assert r.status_code == 200
    x = r.json()
    assert x["userperson"] is None  # the legacy application filed these under user 1
    assert c.get(x["newcomp_image"]).status_code == 200  # reachable by its unguessable id
    alice = signup(c, "alice")
    assert c.get("/api/chexray/user/", headers=alice).json()["pastxrays"] == []
