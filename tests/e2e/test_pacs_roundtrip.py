"""CheXray as an AI node of a real PACS (Orthanc with its DICOMweb plugin): a study stored
in the PACS is pulled, analysed and its results pushed back; instances sent straight to
CheXray by STOW-RS (through an independent DICOMweb client) go the same way; a PACS that is
away is retried until it is back. Every object CheXray writes passes dciodvfy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.support.api import register
from tests.support.dciodvfy import dciodvfy
from tests.support.dicom_studies import (
    CT_IMAGE_STORAGE,
    SNOMED,
    chest_instance,
    concept_codes,
    numbers,
    read,
)
from tests.support.server_process import running_server

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
ROOT = Path(__file__).resolve().parents[2]


def wait_sent(http: httpx.Client, study_id: str, auth: dict, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = http.get(f"/api/v1/studies/{study_id}/pacs", headers=auth)
        assert r.status_code == 200, r.text
        state = r.json()
        if state["status"] != "pending" or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def pacs_objects(orthanc, study_uid: str) -> dict[str, pydicom.Dataset]:
    out = {}
    for inst in orthanc.instances_of_study(study_uid):
        ds = read(orthanc.get_instance_file(inst["ID"]))
        out[ds.SOPInstanceUID] = ds
    return out


def check_valid(ds: pydicom.Dataset, tmp_path: Path) -> None:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    errors, _warnings = dciodvfy(path)
    assert errors == [], (ds.SOPClassUID, errors)


@pytest.fixture
def chexray(orthanc, tiny_repo: Path, tmp_path: Path):
    user, password = orthanc.auth
    env = {
        "CHEXRAY_PACS_URL": orthanc.dicomweb_url,
        "CHEXRAY_PACS_USERNAME": user,
        "CHEXRAY_PACS_PASSWORD": password,
        "CHEXRAY_PACS_RETRY_S": "0.5",
        "CHEXRAY_PACS_MAX_ATTEMPTS": "20",
    }
    with (
        running_server(tiny_repo, tmp_path / "chexray", **env) as (url, _proc),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        auth = register(http, "radiology")
        key = http.post("/api/v1/me/keys", json={"name": "pacs"}, headers=auth).json()["key"]
        yield url, http, auth, key


def test_a_study_in_the_pacs_is_pulled_analysed_and_its_results_pushed_back(
    orthanc, chexray, tmp_path: Path
) -> None:
    url, http, auth, key = chexray
    study_uid = generate_uid()
    source_bytes = chest_instance(study_uid=study_uid, seed=3)
    source = read(source_bytes)
    orthanc.upload(source_bytes)
    orthanc.upload(chest_instance(study_uid=study_uid, sop_class=CT_IMAGE_STORAGE, modality="CT"))

    started = time.monotonic()
    cli = subprocess.run(
        [sys.executable, "-m", "chexray.cli", "pacs", "analyse", study_uid, "--server", url],
        env={**os.environ, "CHEXRAY_API_KEY": key, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "1 analysed, 1 refused" in cli.stdout
    assert "unsupported_sop_class" in cli.stdout

    (summary,) = http.get("/api/v1/studies", headers=auth).json()["items"]
    answer = http.get(f"/api/v1/studies/{summary['id']}", headers=auth).json()
    state = wait_sent(http, answer["id"], auth)
    round_trip_s = time.monotonic() - started
    assert state["status"] == "sent", state
    assert len(state["sent_instances"]) == 6  # the report and five heatmaps
    print(f"round trip (pull, analyse, push, acknowledged): {round_trip_s:.2f} s")

    objects = pacs_objects(orthanc, study_uid)
    srs = [ds for ds in objects.values() if ds.SOPClassUID == SR_CLASS]
    heatmaps = [ds for ds in objects.values() if ds.SOPClassUID == SC_CLASS]
    assert len(srs) == 1 and len(heatmaps) == 5
    (sr,) = srs
    # The report the PACS holds is the one the API serves, and says what the JSON says.
    served = read(http.get(answer["urls"]["dicom_sr"], headers=auth).content)
    assert served.SOPInstanceUID == sr.SOPInstanceUID
    assert sr.StudyInstanceUID == study_uid and sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sr.PatientID, sr.PatientName) == (source.PatientID, source.PatientName)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    ref = evidence.ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    assert set(SNOMED.values()) <= concept_codes(sr)
    values = numbers(sr)
    for finding in answer["findings"]:
        assert any(abs(n - finding["probability"]) < 1e-6 for n in values), finding
    for ds in heatmaps:
        assert ds.StudyInstanceUID == study_uid
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    for ds in [sr, *heatmaps]:
        check_valid(ds, tmp_path)

    # Pulling again analyses the radiograph again and refuses CheXray's own objects; the
    # new results replace nothing of the first (they are another study of CheXray's).
    again = http.post("/api/v1/pacs/pulls", json={"study_uid": study_uid}, headers=auth)
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["analysed"] == 1 and body["refused"] == 7
    # The audit log has every pulled instance, answered or refused, as a pull.
    lines = http.get("/api/v1/admin/audit", headers=auth).text.splitlines()
    pulled = [json.loads(line) for line in lines if json.loads(line)["protocol"] == "pacs-pull"]
    assert [r["outcome"] for r in pulled].count("answered") == 2
    assert {r["error_code"] for r in pulled if r["outcome"] == "refused"} == {
        "unsupported_sop_class"
    }


def test_stow_straight_to_chexray_through_an_independent_client(orthanc, chexray) -> None:
    from dicomweb_client.api import DICOMwebClient

    url, http, auth, key = chexray
    study_uid = generate_uid()
    good = read(chest_instance(study_uid=study_uid, seed=5))
    wrong = read(chest_instance(study_uid=study_uid, sop_class=CT_IMAGE_STORAGE, modality="CT"))
    client = DICOMwebClient(url=f"{url}/dicomweb", headers={"Authorization": f"Bearer {key}"})
    response = client.store_instances([good, wrong])
    (stored,) = response.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == good.SOPInstanceUID
    (failed,) = response.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == wrong.SOPInstanceUID
    assert failed.FailureReason == 0x0122
    study_id = stored.RetrieveURL.rsplit("/", 1)[1]
    assert wait_sent(http, study_id, auth)["status"] == "sent"
    classes = sorted(ds.SOPClassUID for ds in pacs_objects(orthanc, study_uid).values())
    assert classes == sorted([SR_CLASS] + [SC_CLASS] * 5)


def test_a_pacs_that_is_away_is_retried_until_it_is_back(orthanc, chexray) -> None:
    _url, http, auth, _key = chexray
    study_uid = generate_uid()
    orthanc.stop()
    try:
        r = http.post(
            "/api/v1/predictions",
            content=chest_instance(study_uid=study_uid),
            headers={"content-type": "application/dicom", **auth},
        )
        assert r.status_code == 200, r.text
        study = r.json()
        assert study["pacs"]["status"] == "pending"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = http.get(study["urls"]["pacs"], headers=auth).json()
            if state["attempts"] >= 2:
                break
            time.sleep(0.2)
        assert state["status"] == "pending" and state["attempts"] >= 2, state
        assert "try" in state["detail"]
    finally:
        orthanc.start()
    assert wait_sent(http, study["id"], auth)["status"] == "sent"
    assert len(pacs_objects(orthanc, study_uid)) == 6  # the source never reached it; results did
    # Sending again replaces the same instances: the PACS still holds six.
    resent = http.post(study["urls"]["pacs"], headers=auth)
    assert resent.status_code == 202 and resent.json()["status"] == "pending"
    assert wait_sent(http, study["id"], auth)["status"] == "sent"
    assert len(pacs_objects(orthanc, study_uid)) == 6


def test_wrong_pacs_credentials_fail_without_retrying(orthanc, tiny_repo: Path, tmp_path) -> None:
    env = {
        "CHEXRAY_PACS_URL": orthanc.dicomweb_url,
        "CHEXRAY_PACS_USERNAME": "chexray",
        "CHEXRAY_PACS_PASSWORD": "not-the-password",
    }
    with (
        running_server(tiny_repo, tmp_path, **env) as (url, _proc),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        auth = register(http, "radiology")
        r = http.post(
            "/api/v1/predictions",
            content=chest_instance(),
            headers={"content-type": "application/dicom", **auth},
        )
        state = wait_sent(http, r.json()["id"], auth)
        assert state["status"] == "failed" and state["attempts"] == 1, state
        assert "CHEXRAY_PACS_PASSWORD" in state["detail"] or "credentials" in state["detail"]
        pull = http.post("/api/v1/pacs/pulls", json={"study_uid": generate_uid()}, headers=auth)
        assert pull.status_code == 502 and pull.json()["code"] == "pacs_unauthorized"


def test_orthanc_sends_a_study_to_chexray_as_the_readme_configures_it(orthanc, chexray) -> None:
    """Orthanc's DICOMweb plugin, with CheXray as one of its DICOMweb servers (what the
    README tells a PACS administrator to configure), pushes a study by STOW-RS."""
    url, http, auth, key = chexray
    server = {"Url": f"{url}/dicomweb/", "HttpHeaders": {"Authorization": f"Bearer {key}"}}
    r = httpx.put(f"{orthanc.url}/dicom-web/servers/chexray", auth=orthanc.auth, json=server)
    assert r.status_code == 200, r.text
    study_uid = generate_uid()
    stored = orthanc.upload(chest_instance(study_uid=study_uid, seed=8))
    r = httpx.post(
        f"{orthanc.url}/dicom-web/servers/chexray/stow",
        auth=orthanc.auth,
        json={"Resources": [stored["ParentStudy"]]},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    (summary,) = http.get("/api/v1/studies", headers=auth).json()["items"]
    assert wait_sent(http, summary["id"], auth)["status"] == "sent"
    assert len(pacs_objects(orthanc, study_uid)) == 1 + 6  # the source and CheXray's results
