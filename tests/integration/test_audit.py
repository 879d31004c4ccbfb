"""The audit log on real SQLite and PostgreSQL: one record per analysis on every protocol,
answered or refused; the hash chain verifies, and a record changed in the database is
named; records outlive studies and accounts; retention keeps the chain verifiable; two
stores appending to one PostgreSQL database make one chain; the CLI and the admin routes."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import itertools
import json
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from chexray.cli import main
from server.pacs.multipart import encode_related
from server.service.audit import AuditLog
from server.store import audit
from server.store.store import Store
from tests.integration.test_api_keys import bearer, new_key
from tests.support.api import client, error, post_image, register, xray
from tests.support.dicom_studies import CT_IMAGE_STORAGE, chest_instance

AUDIT = "/api/v1/admin/audit"
INFER = "/v2/models/chexray/infer"


def records(c, admin: dict, expected: int | None = None, **params) -> list[dict]:
    """The admin route's lines; with `expected`, waits for that many (a refusal at
    admission is committed just after its answer)."""
    deadline = time.monotonic() + 10
    while True:
        r = c.get(AUDIT, headers=admin, params=params)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.text.splitlines()]
        if expected is None or len(lines) >= expected or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def infer_body(*files: bytes) -> dict:
    data = [base64.b64encode(f).decode() for f in files]
    return {"inputs": [{"name": "image", "shape": [len(files)], "datatype": "BYTES", "data": data}]}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_every_analysis_is_recorded_and_the_chain_verifies(
    tiny_repo: Path, tmp_path: Path, database_url: str
) -> None:
    with client(tiny_repo, tmp_path / "data", database_url) as c:
        admin = register(c, "admin")
        key = new_key(c, admin)
        image = xray(1)
        assert post_image(c, image).status_code == 200  # anonymous
        assert post_image(c, xray(2), headers=admin).status_code == 200  # a user's
        assert post_image(c, xray(3), headers=bearer(key["key"])).status_code == 200
        error(post_image(c, b"GIF89a not an x-ray"), 415, "unsupported_format")
        r = c.post(
            "/api/chexray/upload/",
            files={"image": ("x.png", xray(4), "image/png")},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        assert c.post(INFER, json=infer_body(xray(5), xray(6))).status_code == 200
        # One bad element refuses the whole request: each element is recorded refused.
        assert c.post(INFER, json=infer_body(xray(7), b"GIF89a")).status_code == 400

        lines = records(c, admin)
        assert [(x["protocol"], x["principal"], x["outcome"]) for x in lines] == [
            ("rest", "anonymous", "answered"),
            ("rest", "user", "answered"),
            ("rest", "api_key", "answered"),
            ("rest", "anonymous", "refused"),
            ("legacy", "user", "answered"),
            ("oip-rest", "anonymous", "answered"),
            ("oip-rest", "anonymous", "answered"),
            ("oip-rest", "anonymous", "refused"),
            ("oip-rest", "anonymous", "refused"),
        ]
        first, by_key, refused = lines[0], lines[2], lines[3]
        assert first["input_sha256"] == sha(image) and first["byte_size"] == len(image)
        # Answers hashed beside their decoding, refusals where they were refused: the same.
        assert [x["input_sha256"] for x in lines[4:8]] == [sha(xray(n)) for n in (4, 5, 6, 7)]
        assert (first["image_format"], first["width"], first["height"]) == ("png", 200, 240)
        assert len(first["probabilities"]) == len(first["calls"]) == len(first["thresholds"]) == 5
        assert first["backend"] and first["precision"] == "fp32" and first["model_version"]
        assert set(first["timings"]) == {"decode_ms", "queue_ms", "compute_ms", "total_ms"}
        assert first["request_id"] and first["client"] and first["error_code"] is None
        assert lines[1]["user_id"] == by_key["user_id"] and by_key["api_key_id"] == key["id"]
        assert refused["error_code"] == "unsupported_format" and refused["probabilities"] is None
        assert [x["error_code"] for x in lines[7:]] == ["unsupported_format"] * 2
        assert [x["id"] for x in lines] == list(range(1, len(lines) + 1))
        assert lines[0]["prev_hash"] == audit.GENESIS_HASH
        assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(lines))
        # Never pixels, never who the patient is: only these fields.
        assert list(first) == [*audit.FIELDS, "hash"]

        v = c.get(f"{AUDIT}/verify", headers=admin).json()
        assert v["intact"] is True and v["records"] == len(lines)
        assert v["last_hash"] == lines[-1]["hash"]
        # Paging and the time range.
        assert [x["id"] for x in records(c, admin, after=3, limit=2)] == [4, 5]
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
        assert records(c, admin, since=later) == []


def test_grpc_and_dicomweb_append(tiny_repo: Path, tmp_path: Path) -> None:
    import grpc

    from server.api.oip_proto import grpc_predict_v2_pb2 as pb
    from server.api.oip_proto import grpc_predict_v2_pb2_grpc as pb_grpc
    from tests.support.server_process import free_port

    port = free_port()
    with (
        client(tiny_repo, tmp_path / "data", grpc_port=port) as c,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        admin = register(c, "admin")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="chexray")
        request.inputs.add(name="image", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(len(xray()).to_bytes(4, "little") + xray())
        stub.ModelInfer(request, metadata=[("authorization", admin["Authorization"])])

        instances = [chest_instance(), chest_instance(sop_class=CT_IMAGE_STORAGE, seed=1)]
        body, content_type = encode_related(instances)
        r = c.post(
            "/dicomweb/studies", content=body, headers={"content-type": content_type, **admin}
        )
        assert r.status_code == 202, r.text

        # The instances of one STOW-RS request are analysed side by side: in either order.
        lines = sorted(records(c, admin), key=lambda x: (x["protocol"] != "oip-grpc", x["outcome"]))
        assert [(x["protocol"], x["principal"], x["outcome"]) for x in lines] == [
            ("oip-grpc", "user", "answered"),
            ("dicomweb", "user", "answered"),
            ("dicomweb", "user", "refused"),
        ]
        assert lines[0]["client"] == "127.0.0.1" and lines[0]["request_id"]
        assert lines[1]["image_format"] == "dicom"
        assert lines[1]["input_sha256"] == sha(instances[0])
        assert lines[2]["error_code"] == "unsupported_sop_class"
        assert lines[2]["input_sha256"] == sha(instances[1])
        assert c.get(f"{AUDIT}/verify", headers=admin).json()["intact"] is True


def test_refusals_at_admission_are_recorded(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path / "data", max_queue_wait_ms=0) as c:
        admin = register(c, "admin")
        with c.app.state.service.predictions.admit():  # one in progress: any wait too long
            error(post_image(c, xray()), 503, "overloaded")
            assert c.post(INFER, json=infer_body(xray())).status_code == 503
        lines = records(c, admin, expected=2)
        assert sorted((x["protocol"], x["outcome"], x["error_code"]) for x in lines) == [
            ("oip-rest", "refused", "overloaded"),
            ("rest", "refused", "overloaded"),
        ]
        # Refused before the upload was read: no input to speak of.
        assert all(x["input_sha256"] is None for x in lines)


def test_a_changed_record_is_named_and_records_outlive_studies_and_accounts(
    tiny_repo: Path, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    with client(tiny_repo, tmp_path / "data", database_url) as c:
        admin = register(c, "admin")
        bob = register(c, "bob")
        study = post_image(c, xray(1), headers=bob).json()
        post_image(c, xray(2), headers=bob)
        assert c.delete(f"/api/v1/studies/{study['id']}", headers=bob).status_code == 204
        assert c.delete("/api/v1/me", headers=bob).status_code == 204
        lines = records(c, admin)
        assert len(lines) == 2 and {x["user_id"] for x in lines} == {lines[0]["user_id"]}
        assert c.get(f"{AUDIT}/verify", headers=admin).json()["intact"] is True
        db = c.app.state.service.store.db

        monkeypatch.setenv("CHEXRAY_DATABASE_URL", database_url)
        assert main(["audit", "verify"]) == 0
        assert "Intact: 2 record(s)" in capsys.readouterr().out

        # Someone with the database's password edits one record's probabilities.
        with db.engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_log SET probabilities = :p WHERE id = 2"),
                {"p": json.dumps([0.0] * 5)},
            )
        assert main(["audit", "verify"]) == 1
        out = capsys.readouterr().out
        assert "BROKEN at record 2 (" in out and "changed" in out
        v = c.get(f"{AUDIT}/verify", headers=admin).json()
        assert v["intact"] is False and v["bad_id"] == 2 and v["bad_time"] == lines[1]["time"]

        # Deleting the newest record is found too: the head remembers it.
        with db.engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_log SET probabilities = :p WHERE id = 2"),
                {"p": json.dumps(lines[1]["probabilities"])},
            )
        assert main(["audit", "verify"]) == 0
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE id = 2"))
        assert main(["audit", "verify"]) == 1
        assert "the newest records were deleted" in capsys.readouterr().out


def test_export_cli(
    tiny_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    data = tmp_path / "data"
    with client(tiny_repo, data) as c:
        for seed in range(3):
            post_image(c, xray(seed))
    monkeypatch.setenv("CHEXRAY_DATA_DIR", str(data))
    out = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == [1, 2, 3] and list(lines[0]) == [*audit.FIELDS, "hash"]
    assert lines[0]["input_sha256"] == sha(xray(0))
    capsys.readouterr()
    assert main(["audit", "export", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["audit", "export", "--until", "2999-01-01"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_admin_routes_refuse_others(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path / "data") as c:
        admin = register(c, "admin")
        other = register(c, "other")
        key = new_key(c, admin)["key"]
        for path in (AUDIT, f"{AUDIT}/verify"):
            error(c.get(path, headers=other), 403, "not_admin")
            error(c.get(path, headers=bearer(key)), 403, "key_scope")
            error(c.get(path), 401, "not_authenticated")
            assert c.get(path, headers=admin).status_code == 200
        error(c.get(AUDIT, headers=admin, params={"limit": 0}), 400, "invalid_request")


def _entry(when: dt.datetime, n: int = 0) -> dict[str, object]:
    return {
        "time": when,
        "request_id": f"r{n}",
        "protocol": "rest",
        "principal": "anonymous",
        "input_sha256": "0" * 64,
        "probabilities": [0.1 * n, 0.2, 0.3, 0.4, 0.5],
        "outcome": "answered",
    }


def test_retention_keeps_the_chain_verifiable(tmp_path: Path, database_url: str) -> None:
    asyncio.run(_retention(tmp_path, database_url))


async def _retention(tmp_path: Path, database_url: str) -> None:
    store = Store(database_url, tmp_path / "media")
    await store.open()
    try:
        log = AuditLog(store, retention_days=30)
        now = dt.datetime.now(dt.UTC)
        old = [_entry(now - dt.timedelta(days=40 - i), i) for i in range(5)]
        await log.append(*old, _entry(now, 5), _entry(now - dt.timedelta(days=31), 6))
        assert await log.sweep() == 5  # the oldest prefix; record 7 waits behind record 6
        v = await log.verify()
        assert v.intact and v.records == 2 and v.first_id == 6 and v.anchor_id == 5
        await log.append(_entry(now, 7))
        assert (await log.verify()).intact
        assert await log.sweep() == 0
        # A record removed from the middle leaves a gap that verification names.
        with store.db.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE id = 7"))
        v = await log.verify()
        assert not v.intact and v.bad_id == 8 and "missing" in (v.problem or "")
        await log.close()
    finally:
        store.close()


def test_two_stores_on_one_postgresql_database_make_one_chain(
    tmp_path: Path, postgres: str
) -> None:
    from tests.conftest import create_database

    url = create_database(postgres, "chexray_audit_concurrent")
    stores = [Store(url, tmp_path / "media") for _ in range(2)]
    stores[0].db.create_all()
    now = dt.datetime.now(dt.UTC)
    errors: list[BaseException] = []

    def writer(store: Store, base: int) -> None:
        try:
            for i in range(25):
                with store.db.session() as s:
                    audit.append(s, [_entry(now, base + i), _entry(now, base + i)])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(store, n * 100)) for n, store in enumerate(stores * 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        with stores[1].db.session() as s:
            v = audit.verify(s)
            assert v.intact and v.records == 200 and v.last_id == 200
    finally:
        for store in stores:
            store.close()


def test_no_log_when_switched_off(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path / "data", audit_log=False) as c:
        admin = register(c, "admin")
        assert post_image(c, xray()).status_code == 200
        assert records(c, admin) == []


def test_drift_report_from_the_audit_log(
    tiny_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import msgspec

    from server.runtime.findings import FINDINGS
    from server.runtime.manifest import Calibration
    from server.runtime.repository import current_manifest, install_manifest

    data = tmp_path / "data"
    with client(tiny_copy, data) as c:
        for seed in range(4):
            post_image(c, xray(seed))
        error(post_image(c, b"GIF89a"), 415, "unsupported_format")  # refused: not counted
    monkeypatch.setenv("CHEXRAY_DATA_DIR", str(data))
    capsys.readouterr()

    # Built by convert: no calibration reference, so the check set through the engine.
    report = tmp_path / "drift.json"
    code = main(["drift", "--dir", str(tiny_copy), "--json", str(report)])
    out = capsys.readouterr().out
    assert "generated check set" in out and "Served: 4 answered analyses" in out
    got = json.loads(report.read_text())
    assert got["reference"]["source"] == "check set" and got["served"] == 4
    assert [f["finding"] for f in got["findings"]] == list(FINDINGS)
    assert all(f["served"] == 4 and f["psi"] >= 0 and 0 <= f["ks"] <= 1 for f in got["findings"])
    assert code == (1 if got["flagged"] else 0)

    # A calibration whose set scored far above what is served now: every finding drifts.
    manifest = current_manifest(tiny_copy)
    assert manifest is not None
    calibration = Calibration(
        created="2026-01-01T00:00:00+00:00",
        data="valid.csv",
        images=100,
        label_policy={},
        method="test",
        folds=5,
        previous_version=manifest.version,
        findings=[],
        score_quantiles={f: [0.999] * 100 for f in FINDINGS},
    )
    install_manifest(tiny_copy, msgspec.structs.replace(manifest, calibration=calibration))
    assert main(["drift", "--dir", str(tiny_copy), "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert "calibration set valid.csv (100 images" in out and "DRIFT (PSI > 0.2)" in out
    got = json.loads(report.read_text())
    assert got["flagged"] == list(FINDINGS) and all(f["ks"] == 1.0 for f in got["findings"])
    # The warning level is a setting; a window with nothing in it flags nothing.
    monkeypatch.setenv("CHEXRAY_DRIFT_PSI_WARNING", "100")
    assert main(["drift", "--dir", str(tiny_copy)]) == 0
    assert main(["drift", "--dir", str(tiny_copy), "--since", "2000-01-01"]) == 0
    assert "Nothing was answered by this version" in capsys.readouterr().out
    assert main(["drift", "--dir", str(tiny_copy), "--model-version", "nope"]) == 2
