"""The DICOMweb client's pure parts (server/pacs/client.py): which PACS answer becomes which
kind of error (and whether a retry can help), Retry-After, and STOW-RS response datasets
shaped as PS3.18 writes them, beyond what Orthanc sends."""

from __future__ import annotations

import email.utils
import time
from io import BytesIO

import pytest
from pydicom import dcmread

from server.errors import NotFound, TooLarge, Unavailable
from server.pacs.client import (
    DicomWebClient,
    FailedInstance,
    error_for_status,
    parse_store_response,
)
from server.pacs.errors import (
    MAX_RETRY_AFTER_S,
    REASON_CHARS,
    PacsError,
    PacsNotFound,
    PacsRefused,
    PacsTooLarge,
    PacsUnauthorized,
    PacsUnavailable,
)
from tests.support.dicom_studies import chest_instance

ROOT = "http://pacs.example:8042/dicom-web"


def classify(status: int, body: bytes = b"", **headers: str) -> PacsError:
    return error_for_status(status, headers, body, "study 1.2.3", ROOT)


@pytest.mark.parametrize(
    ("status", "kind", "code", "retryable"),
    [
        (401, PacsUnauthorized, "pacs_unauthorized", False),
        (403, PacsUnauthorized, "pacs_unauthorized", False),
        (404, PacsNotFound, "pacs_not_found", False),
        (400, PacsRefused, "pacs_refused", False),
        (409, PacsRefused, "pacs_refused", False),
        (415, PacsRefused, "pacs_refused", False),
        (408, PacsUnavailable, "pacs_unavailable", True),
        (429, PacsUnavailable, "pacs_unavailable", True),
        (500, PacsUnavailable, "pacs_unavailable", True),
        (502, PacsUnavailable, "pacs_unavailable", True),
        (503, PacsUnavailable, "pacs_unavailable", True),
        (504, PacsUnavailable, "pacs_unavailable", True),
        (302, PacsRefused, "pacs_refused", False),
    ],
)
def test_status_to_kind(status: int, kind: type, code: str, retryable: bool) -> None:
    error = classify(status)
    assert type(error) is kind and error.code == code and error.retryable is retryable
    assert ROOT in error.message and error.detail["status"] == status


def test_generic_kinds_come_first_for_the_status_table() -> None:
    """server/api/errors.py walks the MRO: the generic kind must precede PacsError."""
    assert PacsUnavailable.__mro__.index(Unavailable) < PacsUnavailable.__mro__.index(PacsError)
    assert PacsNotFound.__mro__.index(NotFound) < PacsNotFound.__mro__.index(PacsError)
    assert PacsTooLarge.__mro__.index(TooLarge) < PacsTooLarge.__mro__.index(PacsError)


def test_unauthorized_says_which_settings_to_check() -> None:
    message = classify(401).message
    for name in ("CHEXRAY_PACS_USERNAME", "CHEXRAY_PACS_PASSWORD", "CHEXRAY_PACS_TOKEN"):
        assert name in message


def test_refusal_quotes_the_pacs_reason_truncated_on_one_line() -> None:
    orthanc = b'{"HttpStatus": 400, "Message": "Bad request", "Details": "no\\n such tag"}'
    assert "Bad request: no such tag" in classify(400, orthanc).message
    long = ("x" * (REASON_CHARS * 3)).encode()
    error = classify(422, long)
    assert error.detail["reason"] == "x" * REASON_CHARS + "..."
    assert "x" * (REASON_CHARS + 1) not in error.message


def test_retry_after_seconds_date_and_bounds() -> None:
    assert classify(503, **{"Retry-After": "7"}).retry_after == 7
    assert "in 7 s" in classify(429, **{"Retry-After": "7"}).message
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < classify(503, **{"Retry-After": later}).retry_after <= 120
    assert classify(503, **{"Retry-After": "1e9"}).retry_after == MAX_RETRY_AFTER_S
    assert classify(503, **{"Retry-After": "-5"}).retry_after == 0
    assert classify(503, **{"Retry-After": "soon"}).retry_after is None
    assert classify(503, **{"Retry-After": "nan"}).retry_after is None
    assert "later" in classify(500).message


def test_redirect_names_where() -> None:
    error = classify(301, location="https://pacs.example/dicom-web/studies/1.2.3")
    assert "https://pacs.example/dicom-web" in error.message and "CHEXRAY_PACS_URL" in error.message


def _seq(*items: dict) -> dict:
    return {"vr": "SQ", "Value": list(items)}


def _ui(value: str) -> dict:
    return {"vr": "UI", "Value": [value]}


def test_store_response_with_warnings_failures_and_an_unreported_instance() -> None:
    sent = [chest_instance(seed=s) for s in range(3)] + [b"not dicom"]
    uids = [str(dcmread(BytesIO(i)).SOPInstanceUID) for i in sent[:3]]
    doc = {
        "00081190": {"vr": "UR", "Value": [f"{ROOT}/studies/1.2.3"]},
        "00081199": _seq(
            {
                "00081150": _ui("1.2.840.10008.5.1.4.1.1.1"),
                "00081155": _ui(uids[0]),
                "00081190": {"vr": "UR", "Value": [f"{ROOT}/studies/1.2.3/series/4/instances/5"]},
                "00081196": {"vr": "US", "Value": [0xB000]},  # coercion of data elements
            }
        ),
        "00081198": _seq(
            {
                "00081150": _ui("1.2.840.10008.5.1.4.1.1.1"),
                "00081155": _ui(uids[1]),
                "00081197": {"vr": "US", "Value": [0xA900]},
            }
        ),
    }
    outcome = parse_store_response(202, doc, sent)
    assert outcome.stored_uids == [uids[0]] and outcome.stored[0].warning_reason == 0xB000
    assert outcome.stored[0].retrieve_url.endswith("/instances/5")
    assert outcome.failed[0].sop_instance_uid == uids[1]
    assert outcome.failed[0].reason_text == "data set does not match SOP class (0xA900)"
    assert outcome.unreported == (2, 3) and not outcome.ok
    assert outcome.retrieve_url == f"{ROOT}/studies/1.2.3"


def test_store_response_with_empty_and_odd_values() -> None:
    """Empty sequences as {"vr": "SQ"} (as Orthanc writes them), items without values."""
    doc = {
        "00081199": {"vr": "SQ"},
        "00081198": _seq({"00081197": {"vr": "US", "Value": ["junk"]}}, "not an item"),
    }
    outcome = parse_store_response(409, doc, [b"x"])
    assert not outcome.stored and outcome.failed[0].failure_reason is None
    assert outcome.failed[0].reason_text == "no reason given"
    assert outcome.unreported == ()  # one sent, one failure reported, though without a UID
    assert FailedInstance(None, None, 0x1234).reason_text == "unknown reason (0x1234)"


@pytest.mark.parametrize(
    "kw",
    [
        {"base_url": "ftp://pacs/dicom-web"},
        {"base_url": "pacs:8042"},
        {"base_url": ROOT, "username": "u", "password": "p", "token": "t"},
        {"base_url": ROOT, "username": "u"},
    ],
)
def test_constructor_refuses_what_cannot_work(kw: dict) -> None:
    with pytest.raises(ValueError):
        DicomWebClient(**kw)
