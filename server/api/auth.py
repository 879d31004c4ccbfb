"""Who is calling: a bearer token (Authorization: Bearer, or the legacy Token scheme), an
API key (`chx_...`, in Authorization: Bearer or X-API-Key), or the web app's HttpOnly
session cookie, which must come with a matching CSRF header on unsafe methods.
Dependencies `principal` (optional) and `auth` (required).

An API key is good for inference only: a route takes one only when its handler says so
(`opt=API_KEYS`); any other route that reads the caller answers 403 `key_scope`. With
CHEXRAY_REQUIRE_AUTH, inference routes refuse anonymous callers (`require_caller`)."""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import secrets

from litestar import Request, Response
from litestar.di import NamedDependency

from server.api.errors import ApiError, request_id
from server.api.middleware import parse_address
from server.errors import Unauthenticated
from server.service import AuditContext, Principal, Service
from server.service.accounts import is_api_key, unknown_credential
from server.settings import Settings

SESSION_COOKIE = "chexray_session"
CSRF_COOKIE = "chexray_csrf"
CSRF_HEADER = "x-csrf-token"
API_KEY_HEADER = "x-api-key"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = {"WWW-Authenticate": "Bearer"}
# A route handler's `opt` that lets API keys in (inference routes only).
API_KEYS = {"api_keys": True}


def credential(authorization: str | None, api_key: str | None) -> str | None:
    """The credential in an Authorization value ('Bearer <token or key>', or the legacy
    'Token <token>') or an X-API-Key value (a key); None when neither is sent. Any
    protocol's headers or metadata; Unauthenticated `invalid_credentials` when malformed."""
    if authorization is not None and api_key is not None:
        raise Unauthenticated(
            "invalid_credentials", "send one credential: Authorization or X-API-Key, not both"
        )
    if api_key is not None:
        raw = api_key.strip()
        if not is_api_key(raw):
            raise Unauthenticated(
                "invalid_credentials",
                "X-API-Key takes an API key (chx_...); send tokens as 'Authorization: Bearer'",
            )
        return raw
    if authorization is None:
        return None
    scheme, _, raw = authorization.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not raw.strip():
        raise Unauthenticated(
            "invalid_credentials",
            "Authorization must be 'Bearer <token or API key>' (or 'Token <token>')",
        )
    return raw.strip()


def _credential(request: Request) -> tuple[str, str] | None:
    try:
        raw = credential(request.headers.get("authorization"), request.headers.get(API_KEY_HEADER))
    except Unauthenticated as exc:
        raise ApiError(401, exc.code, exc.message, headers=CHALLENGE) from None
    if raw is not None:
        return raw, "header"
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, "cookie") if cookie else None


def keys_allowed(request: Request) -> bool:
    handler = request.scope.get("route_handler")
    return bool(handler is not None and handler.opt.get("api_keys"))


async def provide_principal(
    request: Request, service: NamedDependency[Service]
) -> Principal | None:
    found = _credential(request)
    if found is None:
        return None
    raw, via = found
    principal = await service.accounts.principal(raw)
    if principal is None:
        exc = unknown_credential(raw)
        raise ApiError(401, exc.code, exc.message, headers=CHALLENGE)
    if principal.by_key and not keys_allowed(request):
        raise ApiError(
            403,
            "key_scope",
            "an API key may only run inference (predictions, uploads, /v2 and gRPC); sign in "
            "with a password for accounts, keys and studies",
        )
    if via == "cookie" and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        expected = request.cookies.get(CSRF_COOKIE, "")
        if not sent or not expected or not hmac.compare_digest(sent, expected):
            raise ApiError(
                403,
                "csrf_failed",
                f"a cookie-authenticated {request.method} needs the {CSRF_HEADER} header "
                f"carrying the {CSRF_COOKIE} cookie's value",
            )
    return principal


NOT_AUTHENTICATED = (
    "this server analyses X-rays for signed-in callers only: send "
    "'Authorization: Bearer <token or API key>' or 'X-API-Key: <API key>'"
)


def require_caller(principal: Principal | None, settings: Settings) -> None:
    """An inference route's check: with CHEXRAY_REQUIRE_AUTH, nobody anonymous."""
    if principal is None and settings.require_auth:
        raise ApiError(401, "not_authenticated", NOT_AUTHENTICATED, headers=CHALLENGE)


async def provide_auth(principal: NamedDependency[Principal | None]) -> Principal:
    if principal is None:
        raise ApiError(
            401,
            "not_authenticated",
            "sign in first: send 'Authorization: Bearer <token>'",
            headers=CHALLENGE,
        )
    return principal


def check_sign_in_request(request: Request, cookie: bool) -> None:
    """A sign-in must be JSON (a cross-site HTML form can only send form or text bodies),
    and a cookie sign-in must come from this site's own pages: otherwise another site
    could sign a visitor into the attacker's account (login CSRF)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the credentials as a JSON body with Content-Type: application/json",
        )
    if not cookie:
        return
    fetch_site = request.headers.get("sec-fetch-site", "").lower()
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if fetch_site in ("cross-site", "same-site") or (origin is not None and origin != own):
        raise ApiError(
            403,
            "cross_site_sign_in",
            "a cookie sign-in must come from this server's own pages",
        )


def client_key(request: Request) -> str:
    """The client address that the limits count against (request.client: the
    address the request context middleware settled on, proxies considered). An IPv6
    client counts by its /64, the block one subscriber is given, or every address of it
    would be a fresh client."""
    host = request.client.host if request.client else "unknown"
    address = parse_address(host)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address) if address is not None else host


def who_asked(
    principal: Principal | None,
    protocol: str,
    client: str | None,
    rid: str | None,
) -> AuditContext:
    """The audit log's account of a caller, on any protocol."""
    if principal is None:
        return AuditContext(protocol, "anonymous", None, None, client, rid)
    kind = "api_key" if principal.by_key else "user"
    key_id = principal.key.id if principal.key is not None else None
    return AuditContext(protocol, kind, principal.user_id, key_id, client, rid)


def audit_context(request: Request, principal: Principal | None, protocol: str) -> AuditContext:
    """Who asked over HTTP: the caller, the client's address (proxies considered) and the
    request id."""
    client = request.client.host if request.client else None
    return who_asked(principal, protocol, client, request_id(request))


def set_session_cookies(
    response: Response, raw: str, expires: dt.datetime, settings: Settings
) -> str:
    """The session cookie (HttpOnly: scripts cannot read it) and a readable CSRF cookie
    whose value the web app echoes in X-CSRF-Token."""
    csrf = secrets.token_urlsafe(24)
    max_age = int((expires - dt.datetime.now(dt.UTC)).total_seconds())
    common = {
        "path": "/",
        "secure": settings.cookie_secure,
        "samesite": "strict",
        "max_age": max_age,
    }
    response.set_cookie(SESSION_COOKIE, raw, httponly=True, **common)
    response.set_cookie(CSRF_COOKIE, csrf, httponly=False, **common)
    return csrf


def clear_session_cookies(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
