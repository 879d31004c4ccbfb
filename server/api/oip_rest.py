"""The Open Inference Protocol over REST (KServe v2, Triton's HTTP API) under /v2, with the
binary tensor data extension: a thin translator between HTTP and `service.inference`.

    GET  /v2                                         server metadata
    GET  /v2/health/live, /v2/health/ready           liveness; readiness as /health/ready
    GET  /v2/models/chexray[/versions/V]             model metadata
    GET  /v2/models/chexray[/versions/V]/ready       model readiness
    POST /v2/models/chexray[/versions/V]/infer       inference

An inference body is JSON, or JSON followed by raw tensors when the request carries
`Inference-Header-Content-Length` (the JSON's length); an input with the parameter
`binary_data_size` takes its elements from there, in the inputs' order. Outputs come back
raw the same way when asked (`"binary_data": true` per output, or `"binary_data_output":
true` for all). In JSON, each BYTES element is a base64 string: an encoded file is no text.
Errors are `{"error": "<code>: <message>"}`.

Inference reads the caller's credential as /api/v1 does (a bearer token or API key in
Authorization, or X-API-Key); with CHEXRAY_REQUIRE_AUTH an anonymous one gets 401
`not_authenticated`. Health, metadata and readiness stay open.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import zlib
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, Router, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import FromPath

from server.api import oip
from server.api.auth import API_KEYS, audit_context, require_caller
from server.api.deps import PrincipalDep, ServiceDep, SettingsDep
from server.api.errors import STATUS_CODES, ApiError, request_id, status_of
from server.errors import ChexrayError, InvalidInput, TooLarge
from server.service import Principal, Service
from server.service.inference import InferRequest, InferResponse, ModelMeta, TensorMeta
from server.settings import Settings

log = logging.getLogger("chexray.api")

HEADER_LENGTH = "inference-header-content-length"
OCTET_STREAM = "application/octet-stream"
TAGS = ["open inference protocol"]


class _Input(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = None


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class _Request(msgspec.Struct):
    inputs: list[_Input]
    id: str = ""
    parameters: dict[str, Any] = {}
    outputs: list[_Output] = []


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        msgspec.json.encode(body), status_code=status, media_type=MediaType.JSON, headers=headers
    )


def _tensor_meta(t: TensorMeta) -> dict[str, object]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def _model_meta(m: ModelMeta) -> dict[str, object]:
    return {
        "name": m.name,
        "versions": list(m.versions),
        "platform": m.platform,
        "inputs": [_tensor_meta(t) for t in m.inputs],
        "outputs": [_tensor_meta(t) for t in m.outputs],
    }


# -- health and metadata -------------------------------------------------------------------


@get("/", tags=TAGS, sync_to_thread=False)
def server_metadata(service: ServiceDep) -> Response:
    """The server's name, version and protocol extensions."""
    meta = service.inference.server_metadata()
    return _json({"name": meta.name, "version": meta.version, "extensions": list(oip.EXTENSIONS)})


@get("/health/live", tags=TAGS, sync_to_thread=False)
def server_live() -> Response:
    return _json({"live": True})


@get("/health/ready", tags=TAGS)
async def server_ready(service: ServiceDep) -> Response:
    """Ready exactly when /health/ready is (200), else 503."""
    ready = await service.inference.ready()
    return _json({"ready": ready}, 200 if ready else 503)


@get("/models/{model_name:str}", tags=TAGS, sync_to_thread=False)
def model_metadata(service: ServiceDep, model_name: FromPath[str]) -> Response:
    """The model's versions, platform, inputs and outputs (datatypes and shapes)."""
    return _json(_model_meta(service.inference.model_metadata(model_name)))


@get("/models/{model_name:str}/versions/{model_version:str}", tags=TAGS, sync_to_thread=False)
def model_version_metadata(
    service: ServiceDep, model_name: FromPath[str], model_version: FromPath[str]
) -> Response:
    return _json(_model_meta(service.inference.model_metadata(model_name, model_version)))


async def _model_ready(service: Service, model_name: str, model_version: str = "") -> Response:
    ready = await service.inference.model_ready(model_name, model_version)
    return _json({"name": model_name, "ready": ready}, 200 if ready else 503)


@get("/models/{model_name:str}/ready", tags=TAGS)
async def model_ready(service: ServiceDep, model_name: FromPath[str]) -> Response:
    """200 when the model can take requests, 503 when not (yet), 404 for another model."""
    return await _model_ready(service, model_name)


@get("/models/{model_name:str}/versions/{model_version:str}/ready", tags=TAGS)
async def model_version_ready(
    service: ServiceDep, model_name: FromPath[str], model_version: FromPath[str]
) -> Response:
    return await _model_ready(service, model_name, model_version)


# -- inference -----------------------------------------------------------------------------


@post("/models/{model_name:str}/infer", tags=TAGS, status_code=200, opt=API_KEYS)
async def infer(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    model_name: FromPath[str],
) -> Response:
    """Inference: input `image` (BYTES [-1], one encoded PNG, JPEG or DICOM per element;
    base64 in JSON, raw with the binary extension) or `pixels` (UINT8 [-1, H, W], at the
    model's input size); outputs as asked, all when none are named. 503 with Retry-After
    when the wait would exceed the server's budget. Credentials as for /api/v1 (a bearer
    token or API key; needed with CHEXRAY_REQUIRE_AUTH); nothing is stored."""
    require_caller(principal, settings)
    return await _infer(request, service, settings, principal, model_name, "")


@post(
    "/models/{model_name:str}/versions/{model_version:str}/infer",
    tags=TAGS,
    status_code=200,
    opt=API_KEYS,
)
async def infer_version(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    model_name: FromPath[str],
    model_version: FromPath[str],
) -> Response:
    """Inference on one version of the model: the one served, or a canary or shadow
    candidate while one is loaded; 409 `version_not_loaded` for a version installed but not
    loaded, 404 `unknown_model_version` for one never installed."""
    require_caller(principal, settings)
    return await _infer(request, service, settings, principal, model_name, model_version)


async def _infer(
    request: Request,
    service: Service,
    settings: Settings,
    principal: Principal | None,
    model_name: str,
    model_version: str,
) -> Response:
    inference = service.inference
    inference.check_model(model_name, model_version)
    audit = audit_context(request, principal, "oip-rest")
    # One place is taken before the body is read, so refusing costs no upload; the request's
    # other images are admitted once its shape is known.
    with inference.admit(model_version, request_id(request), audit):
        body = _inflated(
            await request.body(),
            request.headers.get("content-encoding", ""),
            settings.max_request_bytes,
        )
        asked, binary_outputs = _parse(
            body, request.headers.get(HEADER_LENGTH), model_name, model_version
        )
        answer = await inference.infer(dataclasses.replace(asked, audit=audit), admitted=1)
    return _answer(answer, binary_outputs)


def _inflated(body: bytes, encoding: str, limit: int) -> bytes:
    """The body, decompressed when sent with Content-Encoding gzip or deflate (as
    tritonclient can), within the request size limit."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(
            415,
            "unsupported_content_encoding",
            f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none",
        )
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(
            "invalid_content_encoding", f"the {encoding} body cannot be decompressed: {exc}"
        ) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(
            "payload_too_large",
            f"the decompressed request is larger than {limit} bytes (CHEXRAY_MAX_REQUEST_BYTES)",
        )
    return out


def _parse(
    body: bytes, header_length: str | None, model_name: str, model_version: str
) -> tuple[InferRequest, dict[str, bool]]:
    """The request, and for each output asked for whether it goes back raw (the key ""
    holds the default for outputs not named)."""
    if header_length is None:
        head, binary = body, memoryview(b"")
    else:
        try:
            size = int(header_length)
            assert 0 <= size <= len(body)
        except (ValueError, AssertionError):
            raise InvalidInput(
                "invalid_header_length",
                f"Inference-Header-Content-Length {header_length!r} must be the JSON header's "
                f"length in bytes, at most the body's {len(body)}",
            ) from None
        head, binary = body[:size], memoryview(body)[size:]
    try:
        req = msgspec.json.decode(head, type=_Request)
    except msgspec.DecodeError as exc:
        raise InvalidInput(
            "invalid_request", f"the inference request is not the protocol's JSON: {exc}"
        ) from None
    inputs, offset = [], 0
    for item in req.inputs:
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(
                    "invalid_binary_data",
                    f"input {item.name!r}: binary_data_size must be a byte count",
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    "invalid_binary_data",
                    f"input {item.name!r}: binary_data_size {size} goes past the body's end "
                    f"({len(binary) - offset} bytes left)",
                )
            raw = binary[offset : offset + size]  # a view: the body is not copied again
            offset += size
            inputs.append(oip.from_raw(item.name, item.datatype, item.shape, raw))
        elif item.data is None:
            raise InvalidInput(
                "invalid_tensor_data",
                f"input {item.name!r} has neither data nor the parameter binary_data_size",
            )
        elif item.datatype == oip.BYTES:
            inputs.append(
                oip.from_values(item.name, item.datatype, item.shape, _base64(item.name, item.data))
            )
        else:
            inputs.append(oip.from_values(item.name, item.datatype, item.shape, item.data))
    if offset != len(binary):
        raise InvalidInput(
            "invalid_binary_data",
            f"{len(binary) - offset} bytes of binary data follow the inputs' binary_data_size",
        )
    default = req.parameters.get("binary_data_output") is True
    binary_outputs = {"": default}
    for out in req.outputs:
        flag = out.parameters.get("binary_data")
        binary_outputs[out.name] = default if flag is None else flag is True
    outputs = tuple(out.name for out in req.outputs)
    force = req.parameters.get("force") is True
    request = InferRequest(model_name, tuple(inputs), model_version, outputs, req.id, force)
    return request, binary_outputs


def _base64(name: str, data: object) -> list[bytes]:
    flat = data if isinstance(data, list) else [data]
    out = []
    for value in flat:
        if isinstance(value, list):
            out.extend(_base64(name, value))
            continue
        if not isinstance(value, str):
            raise InvalidInput(
                "invalid_tensor_data", f"input {name!r}: BYTES elements in JSON are base64 strings"
            )
        try:
            # Line breaks (base64 without -w0) are no error; any other stray character is.
            out.append(base64.b64decode("".join(value.split()), validate=True))
        except (binascii.Error, ValueError):
            raise InvalidInput(
                "invalid_base64",
                f"input {name!r}: a BYTES element is not base64 (encode each file in base64 "
                "in JSON, or send it raw with the binary tensor data extension)",
            ) from None
    return out


def _answer(answer: InferResponse, binary_outputs: dict[str, bool]) -> Response:
    outputs, blobs = [], []
    for tensor in answer.outputs:
        entry: dict[str, object] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary_outputs.get(tensor.name, binary_outputs[""]):
            raw = oip.to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = oip.to_values(tensor)
        outputs.append(entry)
    body: dict[str, object] = {
        "model_name": answer.model_name,
        "model_version": answer.model_version,
    }
    if answer.id:
        body["id"] = answer.id
    body["outputs"] = outputs
    head = msgspec.json.encode(body)
    if not blobs:
        return Response(head, media_type=MediaType.JSON)
    return Response(
        head + b"".join(blobs),
        media_type=OCTET_STREAM,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


# -- errors, in the protocol's own form ----------------------------------------------------


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    return _json({"error": f"{code}: {message}"}, status, headers)


def http_status(exc: ChexrayError) -> int:
    """The HTTP table's status, except that the protocol answers every kind of bad input
    with 400 (KServe and Triton do): a wrong format or a damaged file included."""
    status = status_of(exc)
    return 400 if status in (415, 422) else status


def _on_chexray_error(request: Request, exc: ChexrayError) -> Response:
    status = http_status(exc)
    if status == 500:
        return _on_unexpected(request, exc)
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return _error(status, exc.code, exc.message, headers)


def _on_api_error(request: Request, exc: ApiError) -> Response:
    return _error(exc.status, exc.code, exc.message, exc.headers)


def _on_validation(request: Request, exc: ValidationException) -> Response:
    return _error(400, "invalid_request", f"the request does not match the protocol: {exc.extra}")


def _on_http(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status >= 500:
        return _on_unexpected(request, exc)
    code = STATUS_CODES.get(status, "http_error")
    message = exc.detail or code.replace("_", " ")
    if status == 413:
        message = (
            "the request body is larger than this server accepts "
            f"({request.app.state.settings.max_request_bytes} bytes, CHEXRAY_MAX_REQUEST_BYTES)"
        )
    return _error(status, code, message, exc.headers)


def _on_unexpected(request: Request, exc: Exception) -> Response:
    rid = request_id(request)
    log.exception("unexpected error (request %s) on %s %s", rid, request.method, request.url.path)
    return _error(
        500, "internal_error", f"unexpected server error; quote request id {rid} when reporting it"
    )


def router(settings: Settings) -> Router:
    """The /v2 routes, their body limit (CHEXRAY_MAX_REQUEST_BYTES) and error form."""
    return Router(
        path="/v2",
        route_handlers=[
            server_metadata,
            server_live,
            server_ready,
            model_metadata,
            model_version_metadata,
            model_ready,
            model_version_ready,
            infer,
            infer_version,
        ],
        request_max_body_size=settings.max_request_bytes,
        # The protocol's own specification documents these routes and their error form;
        # CheXray's OpenAPI document describes its own API.
        include_in_schema=False,
        exception_handlers={
            ApiError: _on_api_error,
            ChexrayError: _on_chexray_error,
            ValidationException: _on_validation,
            HTTPException: _on_http,
            Exception: _on_unexpected,
        },
    )
