"""API keys: a signed-in user creates, lists and revokes named keys for their services.

A key is shown once, in the answer that creates it (only its SHA-256 is kept), and is good
for inference only (server/api/auth.py): managing keys needs the password's credential (a
bearer token or the session cookie), so a leaked key cannot make more keys.
"""

from __future__ import annotations

from litestar import delete, get, post
from litestar.params import JSONBody, Parameter

from server.api.deps import AuthDep, ServiceDep, SettingsDep
from server.api.openapi import SIGNED_IN, SIGNED_IN_CHANGE, SIGNED_IN_ONLY, errors
from server.api.schemas import KeyCreated, KeyIn, KeyList, KeyOut
from server.service import ApiKey

TAGS = ["API keys"]
# The ids column is a 32-bit integer: a larger id is no key's (and PostgreSQL would refuse
# to compare with it).
MAX_ID = 2**31 - 1


def key_out(key: ApiKey) -> KeyOut:
    assert key.id is not None
    return KeyOut(key.id, key.name, key.prefix, key.created_at, key.last_used_at)


@post(
    "/api/v1/me/keys",
    status_code=201,
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN_CHANGE, 409, 413),
)
async def create_key(auth: AuthDep, data: JSONBody[KeyIn], service: ServiceDep) -> KeyCreated:
    """Create a named API key for inference (`Authorization: Bearer <key>` or `X-API-Key`).
    The answer holds the key itself, shown this once; 409 `key_limit` when the account
    holds the most keys it may."""
    raw, key = await service.accounts.create_key(auth, data.name)
    out = key_out(key)
    return KeyCreated(out.id, out.name, out.prefix, out.created_at, out.last_used_at, raw)


@get("/api/v1/me/keys", tags=TAGS, security=SIGNED_IN_ONLY, responses=errors(*SIGNED_IN))
async def list_keys(auth: AuthDep, service: ServiceDep, settings: SettingsDep) -> KeyList:
    """The account's API keys, newest first: name, id, prefix, created and last used (never
    the key itself)."""
    keys = await service.accounts.keys(auth)
    return KeyList([key_out(k) for k in keys], settings.api_keys_per_user)


@delete(
    "/api/v1/me/keys/{key_id:int}",
    status_code=204,
    tags=TAGS,
    security=SIGNED_IN_ONLY,
    responses=errors(400, *SIGNED_IN_CHANGE, 404),
)
async def revoke_key(
    auth: AuthDep,
    service: ServiceDep,
    key_id: int = Parameter(ge=1, le=MAX_ID, description="the key's id, from the list"),
) -> None:
    """Revoke a key: it stops working at once, on every replica. 404 for an id that is not
    one of the account's keys."""
    await service.accounts.revoke_key(auth, key_id)
