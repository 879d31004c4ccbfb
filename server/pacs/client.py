"""An async DICOMweb client for the PACS: STOW-RS to push instances, WADO-RS to pull a study
or a series, QIDO-RS to list a study's instances.

Every failure is one of `server.pacs.errors`' kinds, which say whether a retry can help.
A STOW-RS answer that lists what was stored and what failed is a `StoreOutcome`, whatever
its status: some PACSes (Orthanc among them) answer 400 or 409 with that list when some or
all instances failed, and the caller needs the list either way.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from server.errors import InvalidInput
from server.pacs.errors import (
    MAX_RETRY_AFTER_S,
    REASON_CHARS,
    PacsBadResponse,
    PacsError,
    PacsNotFound,
    PacsRefused,
    PacsTooLarge,
    PacsUnauthorized,
    PacsUnavailable,
)
from server.pacs.multipart import decode_related, encode_related, parse_content_type

DICOM_JSON = "application/dicom+json"
ACCEPT_INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# The JSON answers of STOW-RS and QIDO-RS are small next to instances; a PACS (or proxy)
# sending more than this is not answering what was asked.
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024  # of an error answer's body, enough for its reason
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# Tags of the STOW-RS response (PS3.18 10.5.3) and of the instances sent.
_RETRIEVE_URL = "00081190"
_FAILED_SEQ = "00081198"
_REFERENCED_SEQ = "00081199"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"

FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such SOP instance",
    0x0117: "invalid object instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    retrieve_url: str | None = None
    warning_reason: int | None = None


@dataclass(frozen=True, slots=True)
class FailedInstance:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure_reason: int | None

    @property
    def reason_text(self) -> str:
        if self.failure_reason is None:
            return "no reason given"
        known = FAILURE_REASONS.get(self.failure_reason, "unknown reason")
        return f"{known} (0x{self.failure_reason:04X})"


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """What the PACS said of a STOW-RS request. `unreported`: positions in the request of
    instances it neither listed as stored nor as failed (Orthanc leaves out instances it
    cannot parse); `status`: its HTTP status."""

    status: int
    stored: tuple[StoredInstance, ...]
    failed: tuple[FailedInstance, ...]
    unreported: tuple[int, ...] = ()
    retrieve_url: str | None = None

    @property
    def ok(self) -> bool:
        """Every instance sent was stored."""
        return not self.failed and not self.unreported

    @property
    def stored_uids(self) -> list[str]:
        return [s.sop_instance_uid for s in self.stored if s.sop_instance_uid]


@dataclass(frozen=True, slots=True)
class _Answer:
    """A PACS's answer, its body read within the bound."""

    status_code: int
    headers: httpx.Headers
    content: bytes


def _check_uid(uid: str, what: str) -> str:
    """A UID goes into the URL's path: only digits and dots, at most 64 characters."""
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.match(uid):
        raise InvalidInput(
            "invalid_uid",
            f"the {what} UID {str(uid)[:80]!r} is not a DICOM UID (digits and dots, at most "
            "64 characters); pass the UID as the instances carry it",
            {"uid": str(uid)[:80]},
        )
    return uid


def _reason(body: bytes) -> str:
    """The PACS's own words from an error body (Orthanc's JSON Details/Message, else the
    text), on one line, truncated."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        words = [str(doc[k]) for k in ("Message", "Details", "message", "detail") if doc.get(k)]
        if words:
            text = ": ".join(words)
    text = " ".join(text.split())
    return text[:REASON_CHARS] + ("..." if len(text) > REASON_CHARS else "")


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), within MAX_RETRY_AFTER_S."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def error_for_status(
    status: int, headers: httpx.Headers | dict[str, str], body: bytes, what: str, root: str
) -> PacsError:
    """The kind of error for a PACS's non-success answer to a request about `what`."""
    headers = httpx.Headers(headers)
    reason = _reason(body)
    said = f": {reason}" if reason else ""
    detail = {"status": status, "reason": reason or None}
    if status in (401, 403):
        return PacsUnauthorized(
            f"the PACS at {root} refused CheXray's credentials for {what} (HTTP {status}); "
            "check CHEXRAY_PACS_USERNAME and CHEXRAY_PACS_PASSWORD, or CHEXRAY_PACS_TOKEN, "
            "and that this account may use DICOMweb there",
            detail,
        )
    if status == 404:
        return PacsNotFound(
            f"the PACS at {root} has no {what} (HTTP 404{said}); check the UID, and that "
            "CHEXRAY_PACS_URL is the PACS's DICOMweb root",
            detail,
        )
    if status in (408, 429) or status >= 500:
        retry_after = _retry_after(headers.get("retry-after"))
        return PacsUnavailable(
            f"the PACS at {root} cannot serve {what} now (HTTP {status}{said}); try again "
            + (f"in {math.ceil(retry_after)} s" if retry_after is not None else "later"),
            detail,
            retry_after,
        )
    if 300 <= status < 400:
        location = headers.get("location", "")[:200]
        return PacsRefused(
            f"the PACS at {root} redirects {what} (HTTP {status}) to {location or 'elsewhere'}; "
            "set CHEXRAY_PACS_URL to the address it names",
            {**detail, "location": location or None},
        )
    return PacsRefused(
        f"the PACS at {root} refused {what} (HTTP {status}{said}); this request will fail "
        "the same way again until what the PACS names is fixed",
        detail,
    )


def _sop_instance_uid(instance: bytes) -> str | None:
    """The SOP Instance UID a Part 10 file carries, or None if it cannot be read."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(
            io.BytesIO(instance), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
        )
        uid = ds.get("SOPInstanceUID")
    except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError):
        return None
    return str(uid) if uid else None


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _items(doc: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = doc.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def parse_store_response(
    status: int, doc: dict[str, Any], instances: Sequence[bytes]
) -> StoreOutcome:
    """A StoreOutcome from a STOW-RS response dataset in DICOM JSON."""
    stored = tuple(
        StoredInstance(
            _first(i, _SOP_CLASS),
            _first(i, _SOP_INSTANCE),
            _first(i, _RETRIEVE_URL),
            _int_or_none(_first(i, _WARNING_REASON)),
        )
        for i in _items(doc, _REFERENCED_SEQ)
    )
    failed = tuple(
        FailedInstance(
            _first(i, _SOP_CLASS),
            _first(i, _SOP_INSTANCE),
            _int_or_none(_first(i, _FAILURE_REASON)),
        )
        for i in _items(doc, _FAILED_SEQ)
    )
    reported = {s.sop_instance_uid for s in stored} | {f.sop_instance_uid for f in failed}
    reported.discard(None)
    unreported: tuple[int, ...] = ()
    if len(stored) + len(failed) < len(instances):
        unreported = tuple(
            n for n, inst in enumerate(instances) if _sop_instance_uid(inst) not in reported
        )
    return StoreOutcome(status, stored, failed, unreported, _first(doc, _RETRIEVE_URL))


class DicomWebClient:
    """A PACS's DICOMweb service at `base_url` (its root, e.g. http://pacs:8042/dicom-web),
    with HTTP basic auth (`username`, `password`) or a bearer `token`, or neither.

    `timeout`: seconds for connecting, and between bytes while sending or receiving;
    `max_retrieve_bytes`: the most a WADO-RS answer may hold (decompressed), beyond which the
    retrieve stops with `pacs_response_too_large` instead of filling memory."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        max_retrieve_bytes: int = 512 * 1024 * 1024,
        max_parts: int = 10_000,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the DICOMweb root must be an http(s) URL, not {base_url!r}")
        if token and (username or password):
            raise ValueError("give either a username and password or a token, not both")
        if (username is None) != (password is None):
            raise ValueError("a username needs a password, and a password a username")
        self.root = str(url).rstrip("/")
        self.max_retrieve_bytes, self.max_parts, self.timeout = (
            max_retrieve_bytes,
            max_parts,
            timeout,
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        auth = httpx.BasicAuth(username, password) if username is not None else None
        self._http = httpx.AsyncClient(
            auth=auth, headers=headers, timeout=httpx.Timeout(timeout), follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        accept: str,
        limit: int,
        content: bytes | None = None,
        content_type: str | None = None,
        answers: tuple[int, ...] = (200,),
    ) -> _Answer:
        """Send; read the answer's body up to `limit` bytes. Statuses in `answers` come back
        (body read); any other becomes its kind of error. Transport failures are
        `pacs_unavailable`."""
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        url = self.root + path
        try:
            async with self._http.stream(method, url, headers=headers, content=content) as resp:
                ok = resp.status_code in answers
                bound = limit if ok else MAX_ERROR_BYTES
                declared = _int_or_none(resp.headers.get("content-length"))
                if ok and declared is not None and declared > bound:
                    raise self._too_large(what, bound, declared)
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > bound:
                        if ok:
                            raise self._too_large(what, bound, None)
                        break  # an error's reason needs no more
                if not ok:
                    raise error_for_status(
                        resp.status_code, resp.headers, bytes(body), what, self.root
                    )
                return _Answer(resp.status_code, resp.headers, bytes(body))
        except httpx.TimeoutException as exc:
            raise PacsUnavailable(
                f"the PACS at {self.root} did not answer {what} within {self.timeout:g} s "
                f"({type(exc).__name__}); retry later, or raise CHEXRAY_PACS_TIMEOUT_S if it "
                "is slow but up",
                {"error": type(exc).__name__},
            ) from None
        except httpx.TransportError as exc:
            raise PacsUnavailable(
                f"cannot reach the PACS at {self.root} for {what} ({type(exc).__name__}: "
                f"{str(exc)[:200]}); check CHEXRAY_PACS_URL and that the PACS is up, then "
                "retry",
                {"error": type(exc).__name__},
            ) from None

    def _too_large(self, what: str, bound: int, declared: int | None) -> PacsTooLarge:
        size = f"{declared} bytes" if declared is not None else "more"
        return PacsTooLarge(
            f"the PACS's answer for {what} holds {size}, over the {bound} bytes this server "
            "takes in one retrieve; retrieve a series at a time, or raise "
            "CHEXRAY_PACS_MAX_PULL_BYTES",
            {"limit_bytes": bound, "declared_bytes": declared},
        )

    def _json(self, resp: _Answer, what: str) -> Any:
        try:
            return json.loads(resp.content) if resp.content.strip() else None
        except ValueError:
            raise PacsBadResponse(
                f"the PACS at {self.root} answered {what} with a body that is not JSON "
                f"(HTTP {resp.status_code}, {resp.headers.get('content-type', 'no type')}); "
                "check that CHEXRAY_PACS_URL is the DICOMweb root, not a web page or proxy",
                {"status": resp.status_code},
            ) from None

    async def store(self, instances: Sequence[bytes], study_uid: str | None = None) -> StoreOutcome:
        """STOW-RS: store Part 10 `instances` (all in `study_uid`, when given)."""
        if not instances:
            raise ValueError("store() needs at least one instance")
        path = "/studies" + (f"/{_check_uid(study_uid, 'study')}" if study_uid else "")
        what = f"the store of {len(instances)} instance(s)"
        body, content_type = encode_related(instances)
        # 400 and 409 may carry the list of what failed (PS3.18 10.5.3; Orthanc uses both).
        resp = await self._request(
            "POST",
            path,
            what,
            accept=DICOM_JSON,
            limit=MAX_JSON_BYTES,
            content=body,
            content_type=content_type,
            answers=(200, 202, 400, 409),
        )
        doc = None
        with contextlib.suppress(ValueError):
            doc = json.loads(resp.content)
        if isinstance(doc, dict) and (_REFERENCED_SEQ in doc or _FAILED_SEQ in doc):
            return parse_store_response(resp.status_code, doc, instances)
        if resp.status_code in (400, 409):
            raise error_for_status(resp.status_code, resp.headers, resp.content, what, self.root)
        raise PacsBadResponse(
            f"the PACS at {self.root} answered {what} with HTTP {resp.status_code} but no "
            "STOW-RS response (no Referenced or Failed SOP Sequence); whether the instances "
            "were stored is unknown: search the study before sending them again",
            {"status": resp.status_code},
        )

    async def retrieve_study(self, study_uid: str) -> list[bytes]:
        """WADO-RS: every instance of a study, as Part 10 files, in any transfer syntax."""
        path = f"/studies/{_check_uid(study_uid, 'study')}"
        return await self._retrieve(path, f"study {study_uid}")

    async def retrieve_series(self, study_uid: str, series_uid: str) -> list[bytes]:
        """WADO-RS: every instance of a series, as Part 10 files, in any transfer syntax."""
        path = (
            f"/studies/{_check_uid(study_uid, 'study')}/series/{_check_uid(series_uid, 'series')}"
        )
        return await self._retrieve(path, f"series {series_uid} of study {study_uid}")

    async def _retrieve(self, path: str, what: str) -> list[bytes]:
        resp = await self._request(
            "GET",
            path,
            what,
            accept=ACCEPT_INSTANCES,
            limit=self.max_retrieve_bytes,
            answers=(200, 204),
        )
        if resp.status_code == 204 or not resp.content:
            return []
        try:
            parts = decode_related(
                resp.content, resp.headers.get("content-type"), max_parts=self.max_parts
            )
        except InvalidInput as exc:
            raise PacsBadResponse(
                f"the PACS at {self.root} answered {what} with a broken multipart body "
                f"({exc.message}); retry, and report it to the PACS's administrators if it "
                "persists",
                {"status": resp.status_code},
            ) from None
        for n, part in enumerate(parts):
            media, _ = parse_content_type(part.content_type)
            if media != "application/dicom":
                raise PacsBadResponse(
                    f"the PACS at {self.root} answered {what} with a part {n + 1} of type "
                    f"{media!r}, not application/dicom; check that the PACS serves WADO-RS "
                    "at CHEXRAY_PACS_URL",
                    {"part": n + 1, "content_type": media},
                )
        return [p.data for p in parts]

    async def search_instances(
        self, study_uid: str, series_uid: str | None = None
    ) -> list[dict[str, Any]]:
        """QIDO-RS: the instances of a study (or of one of its series), as DICOM JSON
        datasets; an empty list when the PACS holds none."""
        path = f"/studies/{_check_uid(study_uid, 'study')}"
        what = f"the search of study {study_uid}"
        if series_uid is not None:
            path += f"/series/{_check_uid(series_uid, 'series')}"
            what = f"the search of series {series_uid} of study {study_uid}"
        resp = await self._request(
            "GET",
            path + "/instances",
            what,
            accept=DICOM_JSON,
            limit=MAX_JSON_BYTES,
            answers=(200, 204),
        )
        if resp.status_code == 204:
            return []
        doc = self._json(resp, what)
        if doc is None:
            return []
        if not isinstance(doc, list) or not all(isinstance(d, dict) for d in doc):
            raise PacsBadResponse(
                f"the PACS at {self.root} answered {what} with JSON that is not a list of "
                "DICOM JSON datasets; check that CHEXRAY_PACS_URL is the DICOMweb root",
                {"status": resp.status_code},
            )
        return doc
