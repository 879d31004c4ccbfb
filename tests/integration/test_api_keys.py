"""API keys against SQLite and a real PostgreSQL server: created, listed and revoked by a
signed-in user, stored only as a hash, good for inference (REST, the legacy upload, /v2)
and refused everywhere else; and CHEXRAY_REQUIRE_AUTH on the REST and /v2 paths."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from sqlmodel import select

from server.store import accounts
from server.store.db import Database
from server.store.models import ApiKey
from tests.support.api import PASSWORD, client, error, register, upload, xray

INFER = "/v2/models/chexray/infer"


@pytest.fixture
def c(tiny_repo: Path, tmp_path: Path, database_url: str):
    with client(tiny_repo, tmp_path, database_url) as c:
        c.database_url = database_url
        yield c


def new_key(c, auth: dict, name: str = "ci") -> dict:
    r = c.post("/api/v1/me/keys", headers=auth, json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rows(database_url: str) -> list[ApiKey]:
    db = Database(database_url)
    try:
        with db.session() as s:
            return list(s.exec(select(ApiKey)).all())
    finally:
        db.dispose()


def oip_body(image: bytes) -> dict:
    import base64

    data = base64.b64encode(image).decode()
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}]}


def test_create_list_use_and_revoke(c) -> None:
    alice = register(c, "alice")
    created = new_key(c, alice, "nightly batch")
    key = created["key"]
    assert key.startswith("chx_") and len(key) == 4 + 43
    assert created["prefix"] == key[:10] and created["name"] == "nightly batch"
    assert created["last_used_at"] is None

    # Only the hash is kept; the list never shows the key again.
    (row,) = rows(c.database_url)
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in repr(row.model_dump())
    listed = c.get("/api/v1/me/keys", headers=alice).json()
    assert listed["limit"] == 20
    assert listed["keys"] == [{k: v for k, v in created.items() if k != "key"}]

    # A prediction with the key: an answer, not kept unless asked, heatmap inline.
    for how in (bearer(key), {"X-API-Key": key}, {"Authorization": f"Token {key}"}):
        body = upload(c, how)
        assert body["stored"] is False and body["id"] is None and body["heatmap_png_base64"]
    assert c.get("/api/v1/me", headers=alice).json()["study_count"] == 0
    used = c.get("/api/v1/me/keys", headers=alice).json()["keys"][0]["last_used_at"]
    assert used is not None

    # store=true: kept in the owner's history (no expiry, no delete token), heatmap inline.
    kept = upload(c, bearer(key), seed=4, store="true")
    assert kept["stored"] and kept["heatmap_png_base64"] and kept["delete_token"] is None
    assert kept["expires_at"] is None
    history = c.get("/api/v1/studies", headers=alice).json()
    assert [s["id"] for s in history["items"]] == [kept["id"]]

    # /v2 inference and model metadata take the key too.
    assert c.post(INFER, json=oip_body(xray()), headers=bearer(key)).status_code == 200
    assert c.post(INFER, json=oip_body(xray()), headers={"X-API-Key": key}).status_code == 200
    assert c.get("/v2/models/chexray", headers=bearer(key)).status_code == 200
    assert c.get("/api/v1/models", headers=bearer(key)).status_code == 200

    # Another user can neither see nor revoke it.
    bob = register(c, "bob")
    assert c.get("/api/v1/me/keys", headers=bob).json()["keys"] == []
    error(c.delete(f"/api/v1/me/keys/{created['id']}", headers=bob), 404, "not_found")

    # Revoked: refused at once, on every path.
    assert c.delete(f"/api/v1/me/keys/{created['id']}", headers=alice).status_code == 204
    r = c.post("/api/v1/predictions", headers=bearer(key), content=xray())
    error(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    r = c.post(INFER, json=oip_body(xray()), headers=bearer(key))
    assert r.status_code == 401 and r.json()["error"].startswith("invalid_api_key: ")
    error(c.delete(f"/api/v1/me/keys/{created['id']}", headers=alice), 404, "not_found")
    assert c.get("/api/v1/me/keys", headers=alice).json()["keys"] == []
    assert rows(c.database_url) == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/me", None),
        ("PATCH", "/api/v1/me", {"full_name": "Mallory"}),
        ("DELETE", "/api/v1/me", None),
        (
            "POST",
            "/api/v1/me/password",
            {"current_password": PASSWORD, "new_password": "x" * 12, "new_password2": "x" * 12},
        ),
        ("GET", "/api/v1/me/keys", None),
        ("POST", "/api/v1/me/keys", {"name": "another"}),
        ("DELETE", "/api/v1/me/keys/1", None),
        ("POST", "/api/v1/auth/logout", None),
        ("GET", "/api/v1/auth/session", None),
        ("GET", "/api/v1/studies", None),
        ("GET", "/api/v1/studies/{study}", None),
        ("DELETE", "/api/v1/studies/{study}", None),
        ("GET", "/api/v1/studies/{study}/image", None),
        ("GET", "/api/v1/studies/{study}/heatmap", None),
        ("GET", "/api/v1/studies/{study}/heatmap/edema", None),
        ("GET", "/api/chexray/user/", None),
        ("POST", "/api/chexray/xray/", {"xray_id": "{study}"}),
        ("GET", "/media/{study}/image.png", None),
    ],
)
def test_a_key_is_refused_beyond_inference(c, method: str, path: str, body) -> None:
    alice = register(c, "alice")
    key = new_key(c, alice)["key"]
    study = upload(c, alice)["id"]
    path = path.replace("{study}", study)
    if body and "xray_id" in body:
        body = {"xray_id": study}
    r = c.request(method, path, headers=bearer(key), json=body)
    body_out = error(r, 403, "key_scope")
    assert "inference" in body_out["message"]
    # Nothing happened: the account, its key and its study are all still there.
    assert c.get("/api/v1/me", headers=alice).json()["study_count"] == 1
    assert len(c.get("/api/v1/me/keys", headers=alice).json()["keys"]) == 1
    assert c.get("/api/v1/me", headers={"X-API-Key": key}).status_code == 403


def test_the_legacy_upload_takes_a_key_and_keeps_the_study(c) -> None:
    alice = register(c, "alice")
    key = new_key(c, alice)["key"]
    r = c.post(
        "/api/chexray/upload/",
        headers={"Authorization": f"Token {key}"},
        files={"image": ("x.png", xray(), "image/png")},
        data={"title": "from a service"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["userperson"] == c.get("/api/v1/me", headers=alice).json()["id"]
    assert c.get("/api/v1/studies", headers=alice).json()["total"] == 1


def test_malformed_and_unknown_credentials(c) -> None:
    alice = register(c, "alice")
    key = new_key(c, alice)["key"]
    token = alice["Authorization"].split()[1]
    both = {**alice, "X-API-Key": key}
    error(c.post("/api/v1/predictions", headers=both, content=xray()), 401, "invalid_credentials")
    error(
        c.post("/api/v1/predictions", headers={"X-API-Key": token}, content=xray()),
        401,
        "invalid_credentials",
    )
    error(c.get("/api/v1/me", headers=bearer("chx_" + "A" * 43)), 401, "invalid_api_key")
    error(c.get("/api/v1/me", headers={"X-API-Key": "chx_nope"}), 401, "invalid_api_key")
    # A session token never reads as a key, nor a key as a token.
    assert not token.startswith("chx_")
    for name in ("", "x" * 101, "tab\there", "nul\x00", "line\n"):
        error(c.post("/api/v1/me/keys", headers=alice, json={"name": name}), 400, "invalid_request")
    error(
        c.post("/api/v1/me/keys", headers=alice, json={"name": "a", "scope": "all"}),
        400,
        "invalid_request",
    )
    error(c.post("/api/v1/me/keys", json={"name": "a"}), 401, "not_authenticated")
    # An id past the column's range is no key's: refused before the database sees it.
    error(c.delete(f"/api/v1/me/keys/{2**63}", headers=alice), 400, "invalid_request")
    error(c.delete("/api/v1/me/keys/0", headers=alice), 400, "invalid_request")
    error(c.delete(f"/api/v1/me/keys/{2**31 - 1}", headers=alice), 404, "not_found")
    assert new_key(c, alice, "Zoë's laptop — CI")["name"] == "Zoë's laptop — CI"


def test_deleting_the_account_deletes_its_keys(c) -> None:
    alice, bob = register(c, "alice"), register(c, "bob")
    key = new_key(c, alice)["key"]
    bobs = new_key(c, bob)["key"]
    assert c.delete("/api/v1/me", headers=alice).status_code == 204
    error(
        c.post("/api/v1/predictions", headers=bearer(key), content=xray()), 401, "invalid_api_key"
    )
    assert [r.prefix for r in rows(c.database_url)] == [bobs[:10]]


def test_a_key_revoked_on_one_replica_is_refused_by_another_at_once(
    tiny_repo: Path, tmp_path: Path, database_url: str
) -> None:
    """Two servers on one database, as replicas behind a load balancer: a key made on one
    works on the other, and its revocation holds on both from the next request on."""
    with (
        client(tiny_repo, tmp_path / "a", database_url) as a,
        client(tiny_repo, tmp_path / "b", database_url) as b,
    ):
        alice = register(a, "alice")
        created = new_key(a, alice)
        for _ in range(2):  # a second use too: nothing about the key is kept between requests
            assert upload(b, bearer(created["key"]))["stored"] is False
        assert a.delete(f"/api/v1/me/keys/{created['id']}", headers=alice).status_code == 204
        r = b.post("/api/v1/predictions", headers=bearer(created["key"]), content=xray())
        error(r, 401, "invalid_api_key")
        r = b.post(INFER, json=oip_body(xray()), headers={"X-API-Key": created["key"]})
        assert r.status_code == 401


def test_keys_are_limited_per_account(tiny_repo: Path, tmp_path: Path, database_url: str) -> None:
    with client(tiny_repo, tmp_path, database_url, api_keys_per_user=2) as c:
        alice = register(c, "alice")
        first, _ = new_key(c, alice, "one"), new_key(c, alice, "two")
        body = error(
            c.post("/api/v1/me/keys", headers=alice, json={"name": "three"}), 409, "key_limit"
        )
        assert body["detail"] == {"limit": 2}
        assert c.get("/api/v1/me/keys", headers=alice).json()["limit"] == 2
        assert c.delete(f"/api/v1/me/keys/{first['id']}", headers=alice).status_code == 204
        names = [k["name"] for k in c.get("/api/v1/me/keys", headers=alice).json()["keys"]]
        assert names == ["two"]
        assert new_key(c, alice, "three")["name"] == "three"
    with client(tiny_repo, tmp_path / "none", api_keys_per_user=0) as c:
        error(
            c.post("/api/v1/me/keys", headers=register(c, "bob"), json={"name": "a"}),
            409,
            "key_limit",
        )


def test_the_key_limit_holds_under_concurrent_creation(tmp_path: Path, database_url: str) -> None:
    """Eight creations at once for one user, limit 3: exactly three keys, on both
    databases (each thread its own connection, as replicas would have)."""
    db = Database(database_url)
    db.create_all()
    try:
        with db.session() as s:
            user_id = accounts.create_user(s, "alice", PASSWORD).id
        outcomes: list[str] = []
        start = threading.Barrier(8)

        def create(i: int) -> None:
            start.wait()
            with db.session() as s:
                try:
                    accounts.create_key(s, user_id, f"k{i}", 3)
                    outcomes.append("created")
                except accounts.KeyLimitReached:
                    outcomes.append("refused")

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
        with db.session() as s:
            assert len(accounts.list_keys(s, user_id)) == 3
    finally:
        db.dispose()


def test_require_auth_refuses_anonymous_inference(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path, require_auth=True) as c:
        r = c.post("/api/v1/predictions", content=xray(), headers={"content-type": "image/png"})
        body = error(r, 401, "not_authenticated")
        assert "X-API-Key" in body["message"] and r.headers["www-authenticate"] == "Bearer"
        for path in ("/api/chexray/anonupload/", "/api/chexray/upload/"):
            r = c.post(path, files={"image": ("x.png", xray(), "image/png")})
            error(r, 401, "not_authenticated")
        r = c.post(INFER, json=oip_body(xray()))
        assert r.status_code == 401 and r.json() == {"error": r.json()["error"]}
        assert r.json()["error"].startswith("not_authenticated: ")
        r = c.post("/v2/models/chexray/versions/x/infer", json=oip_body(xray()))
        assert r.status_code == 401
        # Health, readiness, metrics, model metadata and /v2's health and metadata: open.
        for path in (
            "/health/live",
            "/health/ready",
            "/metrics",
            "/api/v1/models",
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/chexray",
            "/v2/models/chexray/ready",
        ):
            assert c.get(path).status_code == 200, path
        session = c.get("/api/v1/auth/session").json()
        assert session == {"user": None, "auth_required": True}

        # Registration stays open; a token or a key analyses.
        alice = register(c, "alice")
        key = new_key(c, alice)["key"]
        assert upload(c, alice)["stored"] is True
        assert upload(c, bearer(key))["stored"] is False
        assert c.post(INFER, json=oip_body(xray()), headers=bearer(key)).status_code == 200
        assert c.post(INFER, json=oip_body(xray()), headers=alice).status_code == 200
        r = c.post(
            "/api/chexray/anonupload/",
            headers={"X-API-Key": key},
            files={"image": ("x.png", xray(), "image/png")},
        )
        assert r.status_code == 200 and r.json()["userperson"] is None
        assert c.get("/api/v1/auth/session", headers=alice).json()["auth_required"] is True


def test_without_require_auth_anonymous_inference_stays_open(c) -> None:
    assert c.get("/api/v1/auth/session").json() == {"user": None, "auth_required": False}
    assert upload(c)["stored"] is False
    assert c.post(INFER, json=oip_body(xray())).status_code == 200
    r = c.post("/api/chexray/anonupload/", files={"image": ("x.png", xray(), "image/png")})
    assert r.status_code == 200
    # ... but a wrong credential is refused there, as on /api/v1.
    r = c.post(INFER, json=oip_body(xray()), headers=bearer("chx_unknown"))
    assert r.status_code == 401 and r.json()["error"].startswith("invalid_api_key: ")


def test_grpc_takes_keys_and_tokens_and_requires_one_when_asked(
    tiny_repo: Path, tmp_path: Path, database_url: str
) -> None:
    """Through the generated stub, in process (tritonclient's own headers are
    tests/e2e/test_oip_tritonclient.py's): the `authorization` or `x-api-key` metadata;
    a revoked key refused at once."""
    import grpc

    from server.api.oip_proto import grpc_predict_v2_pb2 as pb
    from server.api.oip_proto import grpc_predict_v2_pb2_grpc as pb_grpc
    from tests.support.server_process import free_port

    port = free_port()
    with (
        client(tiny_repo, tmp_path, database_url, grpc_port=port, require_auth=True) as c,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="chexray")
        request.inputs.add(name="image", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(len(xray()).to_bytes(4, "little") + xray())

        def refused(code: str, metadata=()) -> None:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert info.value.details().startswith(f"{code}: "), info.value.details()

        refused("not_authenticated")
        alice = register(c, "alice")
        created = new_key(c, alice)
        key = created["key"]
        assert stub.ModelInfer(request, metadata=[("authorization", f"Bearer {key}")]).outputs
        assert stub.ModelInfer(request, metadata=[("x-api-key", key)]).outputs
        assert stub.ModelInfer(request, metadata=[("authorization", alice["Authorization"])])
        refused("invalid_api_key", [("authorization", "Bearer chx_unknown")])
        refused("invalid_token", [("authorization", "Bearer not-a-token")])
        refused("invalid_credentials", [("authorization", f"Basic {key}")])
        refused("invalid_credentials", [("authorization", f"Bearer {key}"), ("x-api-key", key)])
        # Health, readiness and metadata need nothing.
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="chexray")).ready
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="chexray")).name == "chexray"
        assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "chexray"

        assert c.delete(f"/api/v1/me/keys/{created['id']}", headers=alice).status_code == 204
        refused("invalid_api_key", [("authorization", f"Bearer {key}")])
        assert c.get("/api/v1/me/keys", headers=alice).json()["keys"] == []
