"""DICOM through the REST API: the intended-use guard, the DICOM attributes an answer shows
(never who the patient is), the results as DICOM objects, and STOW-RS into CheXray."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from server.pacs.multipart import encode_related
from tests.support.api import client, error, post_image, register
from tests.support.dicom_studies import (
    CT_IMAGE_STORAGE,
    DX_FOR_PRESENTATION,
    SNOMED,
    chest_instance,
    concept_codes,
    numbers,
    read,
)
from tests.support.images import dicom as sc_dicom


@pytest.fixture
def c(tiny_repo: Path, tmp_path: Path):
    with client(tiny_repo, tmp_path / "data") as c:
        yield c


def test_a_frontal_chest_cr_is_analysed_and_shows_what_it_is_but_not_whose(c) -> None:
    auth = register(c, "rad")
    source = chest_instance()
    r = post_image(c, source, "application/dicom", auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"]["dicom"] == {
        "Modality": "CR",
        "BodyPartExamined": "CHEST",
        "ViewPosition": "PA",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1",
    }
    assert "Doe" not in r.text and "PID-4711" not in r.text and "19700101" not in r.text
    assert body["urls"]["dicom_sr"].endswith(f"/studies/{body['id']}/dicom/sr")
    assert set(body["urls"]["dicom_heatmaps"]) == set(SNOMED)
    assert body["pacs"] is None  # no PACS configured here
    again = c.get(body["urls"]["study"], headers=auth).json()
    assert again["image"]["dicom"] == body["image"]["dicom"]


def test_the_structured_report_holds_the_answer_in_the_source_study(c) -> None:
    auth = register(c, "rad")
    source = read(chest_instance())
    buf = io.BytesIO()
    source.save_as(buf)
    body = post_image(c, buf.getvalue(), "application/dicom", auth).json()
    r = c.get(body["urls"]["dicom_sr"], headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert "no-store" in r.headers["cache-control"]
    sr = read(r.content)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.PatientID == source.PatientID and sr.PatientName == source.PatientName
    assert set(SNOMED.values()) <= concept_codes(sr)
    values = numbers(sr)
    for f in body["findings"]:
        assert any(abs(n - f["probability"]) < 1e-6 for n in values), f
    # The same study always gives the same object: a re-send replaces, never duplicates.
    assert (
        read(c.get(body["urls"]["dicom_sr"], headers=auth).content).SOPInstanceUID
        == sr.SOPInstanceUID
    )

    heat = c.get(body["urls"]["dicom_heatmaps"]["Edema"], headers=auth)
    assert heat.status_code == 200
    obj = read(heat.content)
    assert obj.StudyInstanceUID == source.StudyInstanceUID
    assert (obj.Rows, obj.Columns) == (source.Rows, source.Columns)
    assert obj.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_dicom_results_need_a_dicom_and_the_owner(c) -> None:
    auth = register(c, "rad")
    png_study = c.post(
        "/api/v1/predictions",
        files={"image": ("x.png", _png(), "image/png")},
        headers=auth,
    ).json()
    assert png_study["urls"]["dicom_sr"] is None and png_study["image"]["dicom"] is None
    error(c.get(f"/api/v1/studies/{png_study['id']}/dicom/sr", headers=auth), 409, "not_dicom")
    dicom_study = post_image(c, chest_instance(), "application/dicom", auth).json()
    other = register(c, "other")
    error(c.get(dicom_study["urls"]["dicom_sr"], headers=other), 404, "not_found")
    error(c.get(dicom_study["urls"]["dicom_sr"]), 404, "not_found")
    error(
        c.get(f"{dicom_study['urls']['study']}/dicom/heatmap/nope", headers=auth),
        404,
        "unknown_finding",
    )
    error(c.get(f"{dicom_study['urls']['study']}/pacs", headers=auth), 404, "not_queued")
    error(c.post(f"{dicom_study['urls']['study']}/pacs", headers=auth), 503, "pacs_not_configured")


def _png() -> bytes:
    from tests.support.api import xray

    return xray()


@pytest.mark.parametrize(
    ("kwargs", "concern"),
    [
        ({"view": "LL"}, "lateral_view"),
        ({"view": None, "orientation": "A\\F"}, "lateral_view"),
        ({"body_part": "KNEE"}, "not_chest"),
        ({"modality": "MG"}, "not_radiograph"),
    ],
)
def test_outside_the_intended_use_is_refused_unless_forced(c, kwargs: dict, concern: str) -> None:
    data = chest_instance(**kwargs)
    body = error(post_image(c, data, "application/dicom"), 422, "outside_intended_use")
    assert [x["code"] for x in body["detail"]["concerns"]] == [concern]
    assert "force=true" in body["message"]
    forced = post_image(c, data, "application/dicom", force="true")
    assert forced.status_code == 200, forced.text
    assert any("outside the intended use" in n for n in forced.json()["image"]["notes"])


def test_an_anonymous_dicom_keeps_no_header_unless_stored_and_pngs_are_not_judged(c) -> None:
    r = post_image(c, sc_dicom(_ramp()), "application/dicom")  # DX, no view: within use
    assert r.status_code == 200 and r.json()["urls"] is None
    assert post_image(c, _png()).status_code == 200


def _ramp():
    import numpy as np

    return np.rint(np.linspace(0, 4095, 240 * 200)).reshape(240, 200).astype(np.uint16)


def _stow(
    c, parts: list[bytes], headers: dict | None = None, path: str = "/dicomweb/studies", **params
):
    body, content_type = encode_related(parts)
    return c.post(
        path,
        content=body,
        headers={"content-type": content_type, **(headers or {})},
        params=params,
    )


def _private(item: dict, element: int) -> str | None:
    creator = next(
        (k for k, v in item.items() if k.startswith("0009") and v.get("Value") == ["CHEXRAY"]),
        None,
    )
    if creator is None:
        return None
    block = creator[6:8]
    value = item.get(f"0009{block}{element:02X}", {}).get("Value")
    return value[0] if value else None


def test_stow_analyses_each_instance_on_its_own_and_says_why_others_were_refused(c) -> None:
    auth = register(c, "modality")
    good = chest_instance(seed=1)
    dx = chest_instance(sop_class=DX_FOR_PRESENTATION, modality="DX", seed=2)
    ct = chest_instance(sop_class=CT_IMAGE_STORAGE, modality="CT")
    lateral = chest_instance(view="LL")
    truncated = good[:300]  # the file meta survives, the dataset does not
    corrupt = good[:-5000]  # pixel data cut short
    r = _stow(c, [good, ct, truncated, corrupt, lateral, dx], auth)
    assert r.status_code == 202, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    answer = r.json()
    stored = answer["00081199"]["Value"]
    failed = answer["00081198"]["Value"]
    assert [s["00081155"]["Value"][0] for s in stored] == [
        read(good).SOPInstanceUID,
        read(dx).SOPInstanceUID,
    ]
    for item in stored:
        url = item["00081190"]["Value"][0]
        study = c.get(url, headers=auth)
        assert study.status_code == 200 and study.json()["urls"]["dicom_sr"]
    reasons = {_private(f, 0x01): f["00081197"]["Value"][0] for f in failed}
    assert reasons == {
        "unsupported_sop_class": 0x0122,
        "no_pixel_data": 0xC000,
        "corrupt_image": 0xC000,
        "outside_intended_use": 0x0110,
    }
    lateral_item = next(f for f in failed if _private(f, 0x01) == "outside_intended_use")
    assert lateral_item["00081155"]["Value"][0] == read(lateral).SOPInstanceUID
    assert "ViewPosition LL" in _private(lateral_item, 0x02)
    assert r.headers["warning"].count("299 chexray") == 4
    history = c.get("/api/v1/studies", headers=auth).json()
    assert history["total"] == 2


def test_stow_statuses_auth_and_content_type(c) -> None:
    error(_stow(c, [chest_instance()]), 401, "not_authenticated")
    auth = register(c, "modality")
    all_bad = _stow(c, [chest_instance(view="LL")], auth)
    assert all_bad.status_code == 409 and "00081198" in all_bad.json()
    forced = _stow(c, [chest_instance(view="LL")], auth, force="true")
    assert forced.status_code == 200 and "00081198" not in forced.json()
    r = c.post(
        "/dicomweb/studies",
        content=chest_instance(),
        headers={"content-type": "application/dicom", **auth},
    )
    error(r, 415, "unsupported_media_type")
    r = c.post(
        "/dicomweb/studies",
        content=b"--x\r\n\r\n",
        headers={"content-type": 'multipart/related; type="application/dicom"; boundary=y', **auth},
    )
    error(r, 400, "invalid_multipart")
    one = chest_instance()
    uid = read(one).StudyInstanceUID
    assert _stow(c, [one], auth, path=f"/dicomweb/studies/{uid}").status_code == 200
    wrong = _stow(c, [chest_instance()], auth, path=f"/dicomweb/studies/{uid}")
    assert wrong.status_code == 409
    assert wrong.json()["00081198"]["Value"][0]["00081197"]["Value"][0] == 0xA900


def test_stow_with_an_api_key(c) -> None:
    auth = register(c, "service")
    key = c.post("/api/v1/me/keys", json={"name": "modality"}, headers=auth).json()["key"]
    r = _stow(c, [chest_instance()], {"X-API-Key": key})
    assert r.status_code == 200, r.text


def test_the_open_inference_protocol_judges_dicoms_too_and_takes_force(c) -> None:
    import base64

    lateral = base64.b64encode(chest_instance(view="LL")).decode()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [lateral]}]}
    refused = c.post("/v2/models/chexray/infer", json=body)
    assert refused.status_code == 400  # the protocol's status for any bad input
    assert refused.json()["error"].startswith("outside_intended_use: ")
    forced = c.post("/v2/models/chexray/infer", json={**body, "parameters": {"force": True}})
    assert forced.status_code == 200, forced.text
