"""What the OpenAPI schema says beyond what Litestar reads from the handlers' signatures:
the error answers each route can give (every one the JSON `Error` body of
server/api/errors.py), the upload bodies that server/api/uploads.py reads by hand, and how
callers authenticate. Handlers name their answers with `responses=errors(...)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

# Litestar's own plugin for msgspec Structs (not exported by a public module in 2.x).
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    Encoding,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)

from server.api.schemas import Error, Health

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

# The codes each status carries (README's error table says the same).
ERROR_CODES: dict[int, str] = {
    400: "the request does not match the schema (`invalid_request`, `detail` says where) "
    "or lacks what the route needs (`empty_image`, `missing_image`, `invalid_title`, "
    "`heatmap_url_needs_storage`)",
    401: "no valid credential: `not_authenticated` (none sent, where one is needed: "
    "inference too with CHEXRAY_REQUIRE_AUTH), `invalid_token` (unknown, expired or "
    "revoked), `invalid_api_key` (unknown or revoked), `invalid_credentials` (a malformed "
    "Authorization or X-API-Key header, or a wrong username or password)",
    403: "`not_admin` (an administrator's action), `key_scope` (an API key used beyond "
    "inference), `csrf_failed` (a "
    "cookie-authenticated change without X-CSRF-Token), `cross_site_sign_in` (a cookie "
    "log-in from another site)",
    404: "`not_found` (missing, or another user's), `unknown_finding`, `not_queued` (a "
    "study's results never queued for the PACS), `pacs_not_found` (the PACS has no such "
    "study), `unknown_model_version` (a model version never installed), `no_rollout` (no "
    "canary or shadow running)",
    409: "`username_taken`, `key_limit` (the most API keys an account may hold), `not_dicom` "
    "(DICOM results of a study not analysed from a DICOM), `version_not_loaded` (a model "
    "version installed but not loaded), `version_refused` (a version that cannot be served, "
    "with the reason), `models_busy` (another change of versions is under way), "
    "`already_primary`",
    413: "`image_too_large`, `image_too_many_pixels`, `payload_too_large`",
    415: "`unsupported_format` (not a PNG, JPEG or DICOM, judged from the content), "
    "`unsupported_transfer_syntax`, `unsupported_media_type` (the Content-Type)",
    422: "`corrupt_image`, `no_pixel_data`, `password_mismatch`, `weak_password`, "
    "`outside_intended_use` (a DICOM that says it is not a frontal chest radiograph: a "
    "lateral view, another body part or modality; `detail.concerns` says which; repeat "
    "with force=true to analyse it anyway)",
    429: "`rate_limited`, `anonymous_quota_exceeded` (anonymous studies kept per client "
    "address and hour), with Retry-After",
    502: "`pacs_unauthorized`, `pacs_refused`, `pacs_bad_response`: the PACS refused "
    "CheXray's request or answered wrongly",
    503: "`overloaded` (with Retry-After), `not_ready`, `models_unavailable`, "
    "`database_unavailable` (the database unreachable, with Retry-After), "
    "`pacs_unavailable` (the PACS unreachable or busy), `pacs_not_configured`",
    507: "`storage_full` (no room left to keep the study; nothing of it was kept), "
    "`anonymous_storage_full` (the most anonymous studies kept at once)",
}


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The error answers of a route, for its decorator's `responses=`."""
    return {
        status: ResponseSpec(Error, generate_examples=False, description=ERROR_CODES[status])
        for status in statuses
    }


# Every route that reads a credential can refuse it (an API key beyond inference: 403), and
# needs the database.
SIGNED_IN = (401, 403, 503)
# ... and a change made with the session cookie needs the CSRF header.
SIGNED_IN_CHANGE = (401, 403, 503)
# A route that reads an X-ray (server/api/uploads.py) and runs the engine.
UPLOAD = (400, 413, 415, 422, 503)
NOT_READY = {
    503: ResponseSpec(Health, generate_examples=False, description="not ready: see `checks`")
}

BEARER = "bearer"
SESSION = "session"
API_KEY = "api_key"
SECURITY_SCHEMES = Components(
    security_schemes={
        BEARER: SecurityScheme(
            type="http",
            scheme="bearer",
            description="A token from POST /api/v1/auth/login (the legacy API's "
            "`Authorization: Token <key>` works too), or an API key (`chx_...`, from POST "
            "/api/v1/me/keys; inference only).",
        ),
        API_KEY: SecurityScheme(
            type="apiKey",
            name="X-API-Key",
            security_scheme_in="header",
            description="An API key (`chx_...`) from POST /api/v1/me/keys: good for "
            "inference only (predictions, uploads, /v2, gRPC); elsewhere 403 `key_scope`.",
        ),
        SESSION: SecurityScheme(
            type="apiKey",
            name="chexray_session",
            security_scheme_in="cookie",
            description="The web app's HttpOnly session cookie (log in with "
            '`"cookie": true`); unsafe methods also need X-CSRF-Token carrying the '
            "chexray_csrf cookie's value.",
        ),
    }
)
SIGNED_IN_ONLY: list[SecurityRequirement] = [{BEARER: []}, {SESSION: []}]
# Anyone; a signed-in caller is recognised (their prediction is kept, their study shown).
ANYONE: list[SecurityRequirement] = [{}, {BEARER: []}, {SESSION: []}]
# Inference: anyone (unless CHEXRAY_REQUIRE_AUTH), signed in, or with an API key.
INFERENCE: list[SecurityRequirement] = [*ANYONE, {API_KEY: []}]
SIGNED_IN_OR_KEY: list[SecurityRequirement] = [*SIGNED_IN_ONLY, {API_KEY: []}]

_BINARY = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
IMAGE_TYPES = ("image/png", "image/jpeg", "application/dicom", "application/octet-stream")
UPLOAD_BODY = RequestBody(
    required=True,
    description="A chest X-ray (PNG, JPEG or DICOM, judged from its content): a multipart "
    "form with the file in `image` and an optional `title`, or the image itself as the "
    "body (then `?title=`).",
    content={
        "multipart/form-data": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                required=["image"],
                properties={
                    "image": _BINARY,
                    "title": Schema(type=OpenAPIType.STRING, max_length=200),
                },
            ),
            encoding={"image": Encoding(content_type=", ".join(IMAGE_TYPES[:3]))},
        ),
        **{kind: OpenAPIMediaType(schema=_BINARY) for kind in IMAGE_TYPES},
    },
)

# With a raw image body, the title comes in the query (cut to 200 characters).
TITLE_QUERY = Parameter(
    name="title",
    param_in="query",
    schema=Schema(type=OpenAPIType.STRING),
    description="with the image as the raw body: the study's title (cut to 200 characters); "
    "a multipart form has a `title` field instead",
)


@dataclass
class UploadOperation(Operation):
    """An operation whose body server/api/uploads.py reads by hand (Litestar sees no
    `data` parameter to describe): the upload body above."""

    def __post_init__(self) -> None:
        self.request_body = UPLOAD_BODY
        self.parameters = [*(self.parameters or []), TITLE_QUERY]


@dataclass
class NoContentOperation(Operation):
    """An operation answering 204 through a `Response[None]` (to set or clear cookies),
    which Litestar documents as a JSON `null` body: a 204 has no body at all."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if status == "204" and not isinstance(response, Reference):
                response.content = None


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """A request body that refuses unknown fields (a Struct with forbid_unknown_fields)
    says so in its schema (`additionalProperties: false`), so that clients and schema
    fuzzers know an extra field is an error (400 invalid_request)."""

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
        return schema
