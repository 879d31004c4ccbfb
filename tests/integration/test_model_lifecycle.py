"""Model versions on a running app (tiny repository, a private copy per test): switching the
served version, a refused version, version pinning on REST, /v2 and gRPC, canary and shadow
rollouts and their report, per-version metrics, and who may do any of it."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import numpy as np
import pytest

from server.runtime.manifest import load_manifest
from tests.support.api import client, error, post_image, register, xray
from tests.support.server_process import free_port
from tests.support.versions import HIGH, LOW, archive_version

MODELS = "/api/v1/admin/models"
ROLLOUT = "/api/v1/admin/rollout"
OIP = "/v2/models/chexray"


def activate(c, admin: dict, version: str):
    return c.post(f"{MODELS}/{version}/activate", headers=admin)


def oip_body(image: bytes) -> dict:
    data = [base64.b64encode(image).decode()]
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": data}]}


def predict(c, seed: int = 0, **params) -> dict:
    r = post_image(c, xray(seed), heatmap="none", **params)
    assert r.status_code == 200, r.text
    return r.json()


def calls(answer: dict) -> list[bool]:
    return [f["present"] for f in answer["findings"]]


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_admin_routes_refuse_everyone_but_administrators(tiny_copy: Path, tmp_path: Path) -> None:
    other = archive_version(tiny_copy, LOW)
    with client(tiny_copy, tmp_path / "data") as c:
        admin, user = register(c, "admin"), register(c, "user")
        key = c.post("/api/v1/me/keys", headers=admin, json={"name": "svc"}).json()["key"]
        routes = [
            ("GET", MODELS, None),
            ("POST", f"{MODELS}/{other}/activate", None),
            ("PUT", ROLLOUT, {"mode": "shadow", "version": other}),
            ("DELETE", ROLLOUT, None),
            ("POST", f"{ROLLOUT}/promote", None),
            ("GET", f"{ROLLOUT}/report", None),
        ]
        for method, path, body in routes:
            error(c.request(method, path, headers=user, json=body), 403, "not_admin")
            bearer = {"Authorization": f"Bearer {key}"}
            error(c.request(method, path, headers=bearer, json=body), 403, "key_scope")
            error(c.request(method, path, json=body), 401, "not_authenticated")
        # Nothing changed.
        state = c.get(MODELS, headers=admin).json()
        assert state["rollout"] is None and [e["role"] for e in state["engines"]] == ["primary"]
        assert state["primary"] != other


def test_activation_switches_versions_persists_and_retires_the_old_engine(
    tiny_copy: Path, tmp_path: Path
) -> None:
    other = archive_version(tiny_copy, LOW)
    with client(tiny_copy, tmp_path / "data") as c:
        admin = register(c, "admin")
        first = predict(c)
        old = first["model_version"]
        assert old != other
        r = activate(c, admin, other)
        assert r.status_code == 200, r.text
        assert r.json()["changed"] is True and r.json()["models"]["primary"] == other
        after = predict(c)
        assert after["model_version"] == other and all(calls(after))  # thresholds of 0
        assert c.get("/api/v1/models").json()["version"] == other
        assert c.get("/health/ready").status_code == 200
        # A restart would serve it: the repository's manifest names it now.
        assert load_manifest(tiny_copy).version == other
        # The old engine finished its work and was stopped.
        wait_for(lambda: len(c.get(MODELS, headers=admin).json()["engines"]) == 1)
        installed = {v["version"]: v for v in c.get(MODELS, headers=admin).json()["installed"]}
        assert installed[other]["role"] == "primary" and installed[other]["in_repository"]
        assert installed[old]["role"] is None and not installed[old]["in_repository"]
        # Activating the version served changes nothing.
        again = activate(c, admin, other)
        assert again.status_code == 200 and again.json()["changed"] is False
        # Per-version metrics: both versions' answers and scores, only the served one loaded.
        text = c.get("/metrics").text
        for version in (old, other):
            assert f'chexray_answers_total{{version="{version}"}} 1.0' in text
            assert f'chexray_probability_count{{finding="Edema",version="{version}"}} 1.0' in text
            assert f'model="ensemble",version="{version}"' in text
        assert f'chexray_findings_present_total{{finding="Edema",version="{other}"}} 1.0' in text
        assert re.search(r'chexray_probability_bucket\{finding="Edema",le="0\.05"', text)
        assert re.search(rf'chexray_model_info\{{[^}}]*version="{other}"\}} 1.0', text)
        assert not re.search(rf'chexray_model_info\{{[^}}]*version="{old}"', text)
        assert not re.search(rf'chexray_engine_in_flight\{{[^}}]*version="{old}"', text)


def test_a_broken_or_unknown_version_is_refused_and_the_old_one_keeps_serving(
    tiny_copy: Path, tmp_path: Path
) -> None:
    broken = archive_version(tiny_copy, LOW, broken=True)
    with client(tiny_copy, tmp_path / "data") as c:
        admin = register(c, "admin")
        served = predict(c)["model_version"]
        body = error(activate(c, admin, broken), 409, "version_refused")
        assert "damaged" in body["message"] and "nothing changed" in body["message"]
        error(activate(c, admin, "tiny-000000000000"), 404, "unknown_model_version")
        put = c.put(ROLLOUT, headers=admin, json={"mode": "shadow", "version": broken})
        error(put, 409, "version_refused")
        assert predict(c)["model_version"] == served
        assert load_manifest(tiny_copy).version == served
        state = c.get(MODELS, headers=admin).json()
        assert state["primary"] == served and len(state["engines"]) == 1
        assert not re.search(rf'version="{broken}"', c.get("/metrics").text)


def test_pinning_a_version_on_rest_v2_and_grpc(tiny_copy: Path, tmp_path: Path) -> None:
    import grpc

    from server.api.oip_proto import grpc_predict_v2_pb2 as pb
    from server.api.oip_proto import grpc_predict_v2_pb2_grpc as pb_grpc

    other = archive_version(tiny_copy, HIGH)
    port = free_port()
    with (
        client(tiny_copy, tmp_path / "data", grpc_port=port) as c,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def grpc_infer(version: str):
            msg = pb.ModelInferRequest(
                model_name="chexray",
                model_version=version,
                raw_input_contents=[len(xray()).to_bytes(4, "little") + xray()],
            )
            msg.inputs.add(name="image", datatype="BYTES", shape=[1])
            return stub.ModelInfer(msg)

        admin = register(c, "admin")
        served = predict(c)["model_version"]
        assert predict(c, model_version=served)["model_version"] == served
        # Installed, not loaded: 409; never installed: 404; on every protocol.
        error(post_image(c, xray(), model_version=other), 409, "version_not_loaded")
        error(post_image(c, xray(), model_version="tiny-0"), 404, "unknown_model_version")
        r = c.post(f"{OIP}/versions/{other}/infer", json=oip_body(xray()))
        assert r.status_code == 409 and r.json()["error"].startswith("version_not_loaded: ")
        r = c.post(f"{OIP}/versions/tiny-0/infer", json=oip_body(xray()))
        assert r.status_code == 404 and r.json()["error"].startswith("unknown_model_version: ")
        with pytest.raises(grpc.RpcError) as info:
            grpc_infer(other)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details().startswith("version_not_loaded: ")

        # Loaded as a shadow: pinned requests are answered by it, the rest by the primary.
        put = c.put(ROLLOUT, headers=admin, json={"mode": "shadow", "version": other})
        assert put.status_code == 200, put.text
        pinned = predict(c, model_version=other)
        assert pinned["model_version"] == other and not any(calls(pinned))  # thresholds of 1
        assert predict(c)["model_version"] == served
        r = c.post(f"{OIP}/versions/{other}/infer", json=oip_body(xray()))
        assert r.status_code == 200 and r.json()["model_version"] == other
        assert not np.asarray(
            next(o for o in r.json()["outputs"] if o["name"] == "present")["data"]
        ).any()
        assert c.post(f"{OIP}/infer", json=oip_body(xray())).json()["model_version"] == served
        assert grpc_infer(other).model_version == other
        assert grpc_infer("").model_version == served
        meta = c.get(OIP).json()
        assert meta["versions"] == [served, other]
        assert c.get(f"{OIP}/versions/{other}/ready").status_code == 200


def test_a_canary_answers_its_share_and_promotion_makes_it_primary(
    tiny_copy: Path, tmp_path: Path
) -> None:
    other = archive_version(tiny_copy, LOW)
    with client(tiny_copy, tmp_path / "data") as c:
        admin = register(c, "admin")
        served = predict(c)["model_version"]
        # No fraction: CHEXRAY_CANARY_FRACTION's; one outside 0..1 is refused.
        default = c.put(ROLLOUT, headers=admin, json={"mode": "canary", "version": other})
        assert default.status_code == 200, default.text
        assert default.json()["rollout"]["fraction"] == 0.05
        bad = c.put(
            ROLLOUT, headers=admin, json={"mode": "canary", "version": other, "fraction": 2}
        )
        assert bad.status_code == 400, bad.text
        r = c.put(
            ROLLOUT, headers=admin, json={"mode": "canary", "version": other, "fraction": 0.3}
        )
        assert r.status_code == 200, r.text
        assert r.json()["rollout"] == {"mode": "canary", "version": other, "fraction": 0.3}
        n = 60
        versions = [predict(c, seed=i % 4)["model_version"] for i in range(n)]
        assert set(versions) <= {served, other}
        share = versions.count(other) / n
        print(f"canary 0.3: {versions.count(other)} of {n} answered by the candidate")
        assert 0.08 <= share <= 0.6  # loose: the split is per request id
        report = c.get(f"{ROLLOUT}/report", headers=admin).json()
        assert report["mode"] == "canary" and report["fraction"] == 0.3
        assert report["answers"] == {v: versions.count(v) for v in set(versions)}
        assert report["compared"] == 0 and "paired" in report["note"]
        assert {x["version"] for x in report["latency"]} == set(versions)
        # Fraction 0: nobody gets the candidate unless they pin it.
        c.put(ROLLOUT, headers=admin, json={"mode": "canary", "version": other, "fraction": 0})
        assert {predict(c)["model_version"] for _ in range(10)} == {served}
        promoted = c.post(f"{ROLLOUT}/promote", headers=admin)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["models"]["primary"] == other
        assert promoted.json()["models"]["rollout"] is None
        assert predict(c)["model_version"] == other
        error(c.get(f"{ROLLOUT}/report", headers=admin), 404, "no_rollout")
        error(c.post(f"{ROLLOUT}/promote", headers=admin), 404, "no_rollout")
        error(c.request("DELETE", ROLLOUT, headers=admin), 404, "no_rollout")
        already = c.put(ROLLOUT, headers=admin, json={"mode": "shadow", "version": other})
        error(already, 409, "already_primary")


def test_a_shadow_compares_every_answer_and_never_changes_one(
    tiny_copy: Path, tmp_path: Path
) -> None:
    other = archive_version(tiny_copy, LOW)
    with client(tiny_copy, tmp_path / "data") as c:
        admin = register(c, "admin")
        before = [predict(c, seed=i) for i in range(4)]
        r = c.put(ROLLOUT, headers=admin, json={"mode": "shadow", "version": other})
        assert r.status_code == 200, r.text
        n = 12
        during = [predict(c, seed=i % 4) for i in range(n)]
        for i, a in enumerate(during):
            b = before[i % 4]
            assert a["model_version"] == b["model_version"]
            assert calls(a) == calls(b)
            assert [f["probability"] for f in a["findings"]] == [
                f["probability"] for f in b["findings"]
            ]

        def settled() -> bool:
            return c.get(f"{ROLLOUT}/report", headers=admin).json()["pending"] == 0

        wait_for(settled)
        report = c.get(f"{ROLLOUT}/report", headers=admin).json()
        print("shadow report:", report)
        assert report["mode"] == "shadow" and report["candidate"] == other
        assert report["mirrored"] == n
        assert report["compared"] + report["shed"] + report["failed"] == n
        assert report["compared"] >= 1 and report["failed"] == 0
        assert report["answers"] == {before[0]["model_version"]: n}
        # The same graph with other thresholds: equal probabilities, calls as LOW makes them.
        present = np.array([calls(a) for a in during], bool)
        for f in report["findings"]:
            assert f["mean_abs_difference"] == pytest.approx(0.0, abs=1e-6)
            assert 0.0 <= f["call_agreement"] <= 1.0
        if report["compared"] == n:
            assert [f["call_agreement"] for f in report["findings"]] == pytest.approx(
                present.mean(axis=0).tolist()
            )
        assert {x["version"] for x in report["latency"]} == {
            before[0]["model_version"],
            other,
        }
        ended = c.request("DELETE", ROLLOUT, headers=admin)
        assert ended.status_code == 200 and ended.json()["rollout"] is None
        wait_for(lambda: len(c.get(MODELS, headers=admin).json()["engines"]) == 1)
        assert predict(c)["model_version"] == before[0]["model_version"]


def test_a_rollout_from_the_settings_starts_with_the_server(
    tiny_copy: Path, tmp_path: Path
) -> None:
    other = archive_version(tiny_copy, LOW)
    with client(tiny_copy, tmp_path / "data", shadow_version=other) as c:
        admin = register(c, "admin")
        wait_for(lambda: c.get(MODELS, headers=admin).json()["rollout"] is not None)
        assert c.get(MODELS, headers=admin).json()["rollout"]["mode"] == "shadow"
