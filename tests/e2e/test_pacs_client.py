"""The DICOMweb client (server/pacs/client.py) against a real Orthanc with its DICOMweb plugin
(the `orthanc` fixture): STOW-RS, WADO-RS and QIDO-RS, and each failure as its kind.

What Orthanc 1.10.1 with DICOMweb 1.7 does, and these tests pin: a STOW-RS request holding
a file it cannot parse answers 400, lists the instances it stored in the Referenced SOP
Sequence and leaves the unparseable one out of both sequences; an instance of another study
than the URL's answers 409 with it in the Failed SOP Sequence (reason 0x0110); those 400
and 409 answers carry no Content-Type.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import Awaitable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from server.errors import InvalidInput
from server.pacs.client import DicomWebClient, StoreOutcome
from server.pacs.errors import (
    PacsBadResponse,
    PacsNotFound,
    PacsRefused,
    PacsTooLarge,
    PacsUnauthorized,
    PacsUnavailable,
)
from server.pacs.multipart import encode_related
from tests.support.dicom_studies import chest_instance
from tests.support.orthanc import OrthancServer, missing
from tests.support.server_process import free_port

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def client_of(orthanc: OrthancServer, **kw) -> DicomWebClient:
    return DicomWebClient(
        orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password, **kw
    )


def uid_of(instance: bytes) -> str:
    return str(dcmread(io.BytesIO(instance), stop_before_pixels=True).SOPInstanceUID)


def study(n: int, series: int = 1) -> tuple[str, list[str], list[bytes]]:
    """A study of `n` instances spread over `series` series."""
    study_uid = generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    instances = [
        chest_instance(
            study_uid=study_uid,
            series_uid=series_uids[i % series],
            instance_number=i + 1,
            seed=i,
        )
        for i in range(n)
    ]
    return study_uid, series_uids, instances


async def store(orthanc: OrthancServer, instances: list[bytes], **kw) -> StoreOutcome:
    async with client_of(orthanc) as client:
        return await client.store(instances, **kw)


def test_store_lists_what_was_stored_and_orthanc_holds_it(orthanc: OrthancServer) -> None:
    study_uid, _, instances = study(3, series=2)
    outcome = run(store(orthanc, instances, study_uid=study_uid))
    sent = [uid_of(i) for i in instances]
    assert outcome.status == 200 and outcome.ok
    assert outcome.stored_uids == sent
    assert not outcome.failed and not outcome.unreported
    assert {s.sop_class_uid for s in outcome.stored} == {"1.2.840.10008.5.1.4.1.1.1"}
    assert all(study_uid in (s.retrieve_url or "") for s in outcome.stored)
    assert outcome.retrieve_url and outcome.retrieve_url.endswith(f"/studies/{study_uid}")
    assert orthanc.sop_instance_uids(study_uid) == set(sent)
    # Stored as sent: the file Orthanc keeps has the same pixels.
    kept = {uid_of(f): f for f in map(orthanc.get_instance_file, _ids(orthanc, study_uid))}
    for inst in instances:
        np.testing.assert_array_equal(
            dcmread(io.BytesIO(kept[uid_of(inst)])).pixel_array,
            dcmread(io.BytesIO(inst)).pixel_array,
        )


def _ids(orthanc: OrthancServer, study_uid: str) -> list[str]:
    return [i["ID"] for i in orthanc.instances_of_study(study_uid)]


def test_store_without_a_study_in_the_url(orthanc: OrthancServer) -> None:
    study_uid, _, instances = study(1)
    outcome = run(store(orthanc, instances))
    assert outcome.ok and outcome.stored_uids == [uid_of(instances[0])]
    assert orthanc.sop_instance_uids(study_uid) == {uid_of(instances[0])}


def test_corrupt_instances_beside_good_ones(orthanc: OrthancServer) -> None:
    study_uid, _, good = study(2)
    cut = chest_instance(study_uid=study_uid, seed=9)
    sent = [good[0], b"this is not a DICOM file", good[1], cut[: len(cut) // 2]]
    outcome = run(store(orthanc, sent))
    # Orthanc answers 400 yet stores the good ones, and names neither damaged file.
    assert outcome.status == 400
    assert outcome.stored_uids == [uid_of(good[0]), uid_of(good[1])]
    assert not outcome.failed
    assert outcome.unreported == (1, 3) and not outcome.ok
    assert orthanc.sop_instance_uids(study_uid) == {uid_of(g) for g in good}


def test_only_corrupt_instances(orthanc: OrthancServer) -> None:
    outcome = run(store(orthanc, [b"\x00" * 200]))
    assert outcome.status == 400 and not outcome.stored and outcome.unreported == (0,)


def test_instance_of_another_study_is_listed_as_failed(orthanc: OrthancServer) -> None:
    study_uid, _, instances = study(1)
    stranger = chest_instance(seed=5)  # a study of its own
    outcome = run(store(orthanc, [instances[0], stranger], study_uid=study_uid))
    assert outcome.status == 409  # Orthanc's answer when any instance failed this way
    assert [f.sop_instance_uid for f in outcome.failed] == [uid_of(stranger)]
    assert outcome.failed[0].failure_reason == 0x0110
    assert outcome.failed[0].reason_text == "processing failure (0x0110)"
    assert outcome.stored_uids == [uid_of(instances[0])]
    assert not outcome.unreported and not outcome.ok
    assert uid_of(stranger) not in orthanc.sop_instance_uids(study_uid)


def test_retrieve_study_and_series_round_trip(orthanc: OrthancServer) -> None:
    """Uploaded through Orthanc's own REST API, retrieved through WADO-RS."""
    study_uid, series_uids, instances = study(3, series=2)
    for inst in instances:
        assert orthanc.upload(inst)["Status"] == "Success"

    async def main() -> tuple[list[bytes], list[bytes], list[bytes]]:
        async with client_of(orthanc) as client:
            return (
                await client.retrieve_study(study_uid),
                await client.retrieve_series(study_uid, series_uids[0]),
                await client.retrieve_series(study_uid, series_uids[1]),
            )

    whole, first, second = run(main())
    originals = {uid_of(i): dcmread(io.BytesIO(i)) for i in instances}
    assert sorted(map(uid_of, whole)) == sorted(originals)
    for got in whole:
        ds = dcmread(io.BytesIO(got))
        original = originals[str(ds.SOPInstanceUID)]
        np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)
        assert ds.StudyInstanceUID == study_uid and ds.PatientID == original.PatientID
    # Instances 1 and 3 are in the first series, 2 in the second.
    assert sorted(map(uid_of, first)) == sorted(uid_of(instances[i]) for i in (0, 2))
    assert list(map(uid_of, second)) == [uid_of(instances[1])]


def test_stored_by_this_client_retrieved_by_an_independent_one(orthanc: OrthancServer) -> None:
    from dicomweb_client.api import DICOMwebClient
    from requests import Session

    study_uid, _, instances = study(2)
    assert run(store(orthanc, instances)).ok
    session = Session()
    session.auth = orthanc.auth
    other = DICOMwebClient(orthanc.dicomweb_url, session=session)
    got = other.retrieve_study(study_uid)
    assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(map(uid_of, instances))


def test_search_instances(orthanc: OrthancServer) -> None:
    study_uid, series_uids, instances = study(3, series=2)
    assert run(store(orthanc, instances)).ok

    async def main():
        async with client_of(orthanc) as client:
            return (
                await client.search_instances(study_uid),
                await client.search_instances(study_uid, series_uids[1]),
                await client.search_instances(generate_uid()),
            )

    everything, second, none = run(main())

    def uids(found: list[dict]) -> list[str]:
        return sorted(d["00080018"]["Value"][0] for d in found)

    assert uids(everything) == sorted(map(uid_of, instances))
    assert uids(second) == [uid_of(instances[1])]
    assert none == []
    assert {d["0020000D"]["Value"][0] for d in everything} == {study_uid}


def test_unknown_study_is_not_found(orthanc: OrthancServer) -> None:
    async def main() -> None:
        async with client_of(orthanc) as client:
            await client.retrieve_study(generate_uid())

    with pytest.raises(PacsNotFound) as caught:
        run(main())
    assert caught.value.code == "pacs_not_found" and not caught.value.retryable
    assert "Accessing an inexistent" in caught.value.message  # Orthanc's own words


def test_a_uid_that_is_not_one_is_refused_before_sending(orthanc: OrthancServer) -> None:
    async def main() -> None:
        async with client_of(orthanc) as client:
            await client.retrieve_series("1.2.3", "../../instances")

    with pytest.raises(InvalidInput) as caught:
        run(main())
    assert caught.value.code == "invalid_uid"


def test_wrong_credentials_are_unauthorized(orthanc: OrthancServer) -> None:
    study_uid, _, instances = study(1)

    async def attempt(client: DicomWebClient, op: str) -> None:
        async with client:
            if op == "store":
                await client.store(instances)
            elif op == "retrieve":
                await client.retrieve_study(study_uid)
            else:
                await client.search_instances(study_uid)

    for op in ("store", "retrieve", "search"):
        wrong = DicomWebClient(orthanc.dicomweb_url, username=orthanc.username, password="no")
        with pytest.raises(PacsUnauthorized) as caught:
            run(attempt(wrong, op))
        error = caught.value
        assert error.code == "pacs_unauthorized" and not error.retryable
        assert "CHEXRAY_PACS_PASSWORD" in error.message and error.detail["status"] == 401
    # Orthanc knows no bearer tokens: a token is refused the same way.
    with pytest.raises(PacsUnauthorized):
        run(attempt(DicomWebClient(orthanc.dicomweb_url, token="t0ken"), "search"))
    assert orthanc.sop_instance_uids(study_uid) == set()


def test_closed_port_is_unavailable() -> None:
    async def main() -> None:
        async with DicomWebClient(f"http://127.0.0.1:{free_port()}/dicom-web") as client:
            await client.search_instances(generate_uid())

    with pytest.raises(PacsUnavailable) as caught:
        run(main())
    assert caught.value.code == "pacs_unavailable" and caught.value.retryable
    assert "cannot reach the PACS" in caught.value.message


def test_silent_server_times_out_as_unavailable() -> None:
    """A socket that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"

        async def main() -> None:
            async with DicomWebClient(url, timeout=0.5) as client:
                await client.retrieve_study(generate_uid())

        with pytest.raises(PacsUnavailable) as caught:
            run(main())
    assert "did not answer" in caught.value.message and caught.value.retryable


def test_stopped_orthanc_is_unavailable_then_back(tmp_path: Path) -> None:
    reason = missing()
    if reason:
        pytest.skip(reason)
    pacs = OrthancServer(tmp_path / "orthanc")
    pacs.start()
    try:
        study_uid, _, instances = study(2)
        assert run(store(pacs, instances[:1])).ok
        pacs.stop()
        with pytest.raises(PacsUnavailable) as caught:
            run(store(pacs, instances[1:]))
        assert caught.value.retryable
        pacs.start()  # same port, same data
        assert run(store(pacs, instances[1:])).ok
        assert pacs.sop_instance_uids(study_uid) == set(map(uid_of, instances))
    finally:
        pacs.stop()


def test_retrieve_over_the_byte_bound(orthanc: OrthancServer) -> None:
    study_uid, _, instances = study(2)
    assert run(store(orthanc, instances)).ok
    one = len(instances[0])

    async def retrieve(limit: int) -> list[bytes]:
        async with client_of(orthanc, max_retrieve_bytes=limit) as client:
            return await client.retrieve_study(study_uid)

    with pytest.raises(PacsTooLarge) as caught:
        run(retrieve(one + 1000))  # room for one instance, not two
    error = caught.value
    assert error.code == "pacs_response_too_large" and not error.retryable
    assert "CHEXRAY_PACS_MAX_PULL_BYTES" in error.message
    assert error.detail["limit_bytes"] == one + 1000
    assert len(run(retrieve(4 * one))) == 2


class ScriptedPacs:
    """A local HTTP server answering every request with one scripted status, headers and
    body: the answers Orthanc never gives (503, 429, a broken body)."""

    def __init__(self) -> None:
        self.status, self.headers, self.body = 200, {}, b""
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(script.status)
                for name, value in script.headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in script.headers:
                    self.send_header("Content-Length", str(len(script.body)))
                self.end_headers()
                self.wfile.write(script.body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.status, self.body = status, body
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    pacs = ScriptedPacs()
    try:
        yield pacs
    finally:
        pacs.close()


def call(url: str, op: str, **kw):
    async def main():
        async with DicomWebClient(url, **kw) as client:
            if op == "store":
                return await client.store([chest_instance()])
            if op == "retrieve":
                return await client.retrieve_study("1.2.3")
            return await client.search_instances("1.2.3")

    return run(main())


@pytest.mark.parametrize("op", ["store", "retrieve", "search"])
def test_overloaded_pacs_is_unavailable_with_its_retry_after(scripted, op: str) -> None:
    scripted.answer(503, b"busy", Retry_After="12")
    with pytest.raises(PacsUnavailable) as caught:
        call(scripted.url, op)
    assert caught.value.retry_after == 12 and caught.value.retryable
    assert "busy" in caught.value.message
    scripted.answer(429)
    with pytest.raises(PacsUnavailable):
        call(scripted.url, op)
    scripted.answer(500, b"internal")
    with pytest.raises(PacsUnavailable):
        call(scripted.url, op)


@pytest.mark.parametrize("op", ["store", "retrieve", "search"])
def test_other_refusals_quote_the_pacs(scripted, op: str) -> None:
    scripted.answer(415, b"Unsupported media type: expected multipart")
    with pytest.raises(PacsRefused) as caught:
        call(scripted.url, op)
    assert "expected multipart" in caught.value.message and not caught.value.retryable


def test_answers_that_are_not_dicomweb(scripted) -> None:
    scripted.answer(200, b"<html>login</html>", Content_Type="text/html")
    with pytest.raises(PacsBadResponse, match="not JSON"):
        call(scripted.url, "search")
    with pytest.raises(PacsBadResponse, match="no STOW-RS response"):
        call(scripted.url, "store")
    with pytest.raises(PacsBadResponse, match="broken multipart"):
        call(scripted.url, "retrieve")
    body, content_type = encode_related([b"{}"], "application/dicom+json")
    scripted.answer(200, body, Content_Type=content_type)
    with pytest.raises(PacsBadResponse, match=r"application/dicom\+json"):
        call(scripted.url, "retrieve")
    # A STOW 400 without the lists is a refusal, with the PACS's words.
    scripted.answer(400, b"missing boundary")
    with pytest.raises(PacsRefused, match="missing boundary"):
        call(scripted.url, "store")


def test_declared_length_over_the_bound_stops_before_reading(scripted) -> None:
    body, content_type = encode_related([b"x" * 5000])
    scripted.answer(200, body, Content_Type=content_type)
    assert call(scripted.url, "retrieve", max_retrieve_bytes=len(body)) == [b"x" * 5000]
    with pytest.raises(PacsTooLarge) as caught:
        call(scripted.url, "retrieve", max_retrieve_bytes=len(body) - 1)
    assert caught.value.detail["declared_bytes"] == len(body)
    scripted.answer(204)
    assert call(scripted.url, "retrieve") == []
    assert call(scripted.url, "search") == []
