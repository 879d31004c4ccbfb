"""DIMSE C-STORE into a real `chexray serve`, from pynetdicom's SCU as a modality would
send: each instance its own status, radiographs analysed into the configured account's
history, others refused with the reason; unknown calling AE titles are turned away."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.support.api import register
from tests.support.dicom_studies import CT_IMAGE_STORAGE, chest_instance
from tests.support.server_process import free_port, running_server

CR = "1.2.840.10008.5.1.4.1.1.1"


def send(port: int, instances: list[bytes], calling: str = "MODALITY") -> list:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for uid in (CR, CT_IMAGE_STORAGE):
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="CHEXRAY")
    if not assoc.is_established:
        return []
    try:
        return [assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))) for data in instances]
    finally:
        assoc.release()


@pytest.fixture
def scp(tiny_repo: Path, tmp_path: Path):
    pytest.importorskip("pynetdicom")
    port = free_port()
    env = {
        "CHEXRAY_DIMSE_PORT": str(port),
        "CHEXRAY_DIMSE_OWNER": "xray-room",
        "CHEXRAY_DIMSE_CALLING_AES": "MODALITY,PACS",
    }
    with (
        running_server(tiny_repo, tmp_path, **env) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        yield port, http


def test_c_store_analyses_radiographs_and_says_why_it_refuses_the_rest(scp) -> None:
    port, http = scp
    # The owner does not exist yet: instances are refused as not authorised.
    (early,) = send(port, [chest_instance()])
    assert early.Status == 0x0124 and "CHEXRAY_DIMSE_OWNER" in early.ErrorComment
    auth = register(http, "xray-room")
    good, lateral, ct = (
        chest_instance(seed=2),
        chest_instance(view="LL"),
        chest_instance(sop_class=CT_IMAGE_STORAGE, modality="CT"),
    )
    statuses = send(port, [good, lateral, ct])
    assert [s.Status for s in statuses] == [0x0000, 0x0110, 0x0122]
    assert statuses[1].ErrorComment.startswith("outside_intended_use")
    assert statuses[2].ErrorComment.startswith("unsupported_sop_class")
    (study,) = http.get("/api/v1/studies", headers=auth).json()["items"]
    full = http.get(study["urls"]["study"], headers=auth).json()
    assert full["image"]["dicom"]["SOPClassUID"] == CR
    sr = pydicom.dcmread(io.BytesIO(http.get(full["urls"]["dicom_sr"], headers=auth).content))
    assert sr.StudyInstanceUID == pydicom.dcmread(io.BytesIO(good)).StudyInstanceUID
    # Each C-STORE is in the audit log (the owner is the first account: an administrator).
    records = [json.loads(x) for x in http.get("/api/v1/admin/audit", headers=auth).text.split()]
    dimse = [(r["outcome"], r["error_code"]) for r in records if r["protocol"] == "dimse"]
    assert dimse == [
        ("answered", None),
        ("refused", "outside_intended_use"),
        ("refused", "unsupported_sop_class"),
    ]
    assert {r["client"] for r in records if r["protocol"] == "dimse"} == {"dicom:MODALITY"}


def test_unknown_calling_ae_titles_are_turned_away(scp) -> None:
    port, http = scp
    register(http, "xray-room")
    assert send(port, [chest_instance()], calling="STRANGER") == []
    assert len(send(port, [chest_instance()], calling="PACS")) == 1
