"""Every error leaves as JSON {code, message, detail, request_id} with the right status.

Bad input is always a 4xx with a stable code; only a bug becomes a 500, and that is
logged with the request id the client also receives.
"""

from __future__ import annotations

import logging

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from server.api.middleware import CLIENT_CLOSED_REQUEST, client_disconnected
from server.api.schemas import Error
from server.errors import (
    ChexrayError,
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnprocessableInput,
    UnsupportedInput,
    UpstreamError,
)

log = logging.getLogger("chexray.api")

STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    502: "bad_gateway",
    503: "unavailable",
    507: "insufficient_storage",
}


# The one table from the service's and runtime's kinds of error to HTTP statuses; the
# error's own code and message go into the body unchanged.
STATUS_OF_KIND: dict[type[ChexrayError], int] = {
    InvalidInput: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    UnsupportedInput: 415,
    UnprocessableInput: 422,
    QuotaExceeded: 429,
    UpstreamError: 502,
    Unavailable: 503,
    InsufficientStorage: 507,
}


def status_of(exc: ChexrayError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF_KIND:
            return STATUS_OF_KIND[kind]
    return 500


class ApiError(Exception):
    """An error of the HTTP layer itself (a missing form field, a rate limit, CSRF)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: object | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.detail, self.headers = detail, headers or {}


def request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _respond(request: Request, status: int, code: str, message: str, detail=None, headers=None):
    body = Error(code, message, detail, request_id(request))
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers or {})


def handle_api_error(request: Request, exc: ApiError) -> Response:
    return _respond(request, exc.status, exc.code, exc.message, exc.detail, exc.headers)


def handle_chexray_error(request: Request, exc: ChexrayError) -> Response:
    status = status_of(exc)
    if status == 500:  # a kind without a status is a bug here, not the caller's fault
        return handle_unexpected(request, exc)
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return _respond(request, status, exc.code, exc.message, exc.detail, headers)


def handle_validation(request: Request, exc: ValidationException) -> Response:
    return _respond(
        request,
        400,
        "invalid_request",
        "the request does not match the schema: see detail",
        exc.extra,
    )


def handle_http(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status >= 500 and client_disconnected(request.scope):
        # Litestar's "client disconnected prematurely": the client's doing, not a bug.
        return handle_client_gone(request)
    if status >= 500:
        return handle_unexpected(request, exc)
    code = STATUS_CODES.get(status, "http_error")
    message = exc.detail or code.replace("_", " ")
    detail = None
    if status == 413:
        limit = _body_limit(request)
        message = "the request body is larger than this server accepts"
        if limit is not None:
            message = f"the request body is larger than the {limit} bytes this endpoint accepts"
            detail = {"limit_bytes": limit}
    return _respond(request, status, code, message, detail, exc.headers)


def _body_limit(request: Request) -> int | None:
    """The body limit of the route answering (app.py sets one on every layer)."""
    resolve = getattr(request.scope.get("route_handler"), "resolve_request_max_body_size", None)
    return resolve() if resolve is not None else None


def handle_client_gone(request: Request) -> Response:
    """The client closed the connection before sending its whole request: nobody will
    read this answer; it is logged and counted as 499, without a traceback."""
    log.info(
        "client disconnected before sending its whole request (request %s) on %s %s",
        request_id(request),
        request.method,
        request.url.path,
    )
    return _respond(
        request,
        CLIENT_CLOSED_REQUEST,
        "client_disconnected",
        "the connection closed before the whole request arrived",
    )


def handle_unexpected(request: Request, exc: Exception) -> Response:
    rid = request_id(request)
    log.exception("unexpected error (request %s) on %s %s", rid, request.method, request.url.path)
    return _respond(
        request,
        500,
        "internal_error",
        f"unexpected server error; quote request id {rid} when reporting it",
    )


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    ChexrayError: handle_chexray_error,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}
