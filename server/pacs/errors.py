"""What can go wrong talking to the PACS, as kinds with stable codes that say whether a retry
can help (`retryable`).

Each kind that has a natural status in the generic table also derives from that generic
kind, first in its bases, so `server/api/errors.py` maps it without a row of its own:
the PACS being down is `Unavailable` (503), a study it does not hold is `NotFound` (404), a
retrieve over the byte bound is `TooLarge` (413). The others (`PacsUnauthorized`,
`PacsRefused`, `PacsBadResponse`) are the PACS's failure, not the caller's: as
`UpstreamError`s they are answered 502.
"""

from __future__ import annotations

from server.errors import NotFound, TooLarge, Unavailable, UpstreamError

# Retry-After on a 429/503 is honoured up to this many seconds; past it, a caller should
# not hold work that long on the PACS's word.
MAX_RETRY_AFTER_S = 3600.0
REASON_CHARS = 300  # the most of the PACS's own error text that a message quotes


class PacsError(UpstreamError):
    """Any failure talking to the PACS. `retryable`: whether the same request may succeed
    later unchanged."""

    retryable = False


class PacsUnavailable(Unavailable, PacsError):
    """Unreachable, timed out, 5xx, 429, 503: try again later (retry_after when it said)."""

    retryable = True

    def __init__(self, message: str, detail: object | None = None, retry_after=None) -> None:
        super().__init__("pacs_unavailable", message, detail, retry_after)


class PacsUnauthorized(PacsError):
    """401/403: the PACS refuses CheXray's credentials; no retry helps until they change."""

    def __init__(self, message: str, detail: object | None = None) -> None:
        super().__init__("pacs_unauthorized", message, detail)


class PacsNotFound(NotFound, PacsError):
    """404: the PACS does not hold the study or series (or the DICOMweb root is wrong)."""

    def __init__(self, message: str, detail: object | None = None) -> None:
        super().__init__("pacs_not_found", message, detail)


class PacsRefused(PacsError):
    """Another 4xx: the PACS refused the request itself; its reason is in the message."""

    def __init__(self, message: str, detail: object | None = None) -> None:
        super().__init__("pacs_refused", message, detail)


class PacsTooLarge(TooLarge, PacsError):
    """A retrieve's response is larger than the configured bound."""

    def __init__(self, message: str, detail: object | None = None) -> None:
        super().__init__("pacs_response_too_large", message, detail)


class PacsBadResponse(PacsError):
    """The PACS answered 2xx with a body that is not what DICOMweb says (a broken multipart,
    JSON that is not DICOM JSON): a faulty PACS or proxy, not a passing condition."""

    def __init__(self, message: str, detail: object | None = None) -> None:
        super().__init__("pacs_bad_response", message, detail)
