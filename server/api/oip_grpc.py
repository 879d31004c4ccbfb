"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` (KServe's
grpc_predict_v2.proto, vendored in server/api/oip_proto), served by grpc.aio in the HTTP
server's process and event loop, on CHEXRAY_GRPC_PORT. A thin translator between protobuf
messages and `service.inference`; the same engine, batcher, admission and limits as REST.

Errors carry the gRPC status of their kind (bad input INVALID_ARGUMENT, another model
NOT_FOUND, no room or not ready UNAVAILABLE, with a `retry-after` trailer in seconds) and
the message "<code>: <message>". A message over CHEXRAY_MAX_REQUEST_BYTES is refused by
gRPC itself (RESOURCE_EXHAUSTED) before it reaches the service.

ModelInfer reads the caller's credential from the `authorization` metadata ("Bearer
<token or API key>") or `x-api-key`, as REST reads the headers: a wrong one is
UNAUTHENTICATED, and so is none with CHEXRAY_REQUIRE_AUTH. The other calls (health,
metadata, readiness) stay open.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from server import tracing
from server.api import oip
from server.api.auth import API_KEY_HEADER, NOT_AUTHENTICATED, credential, who_asked
from server.api.middleware import SAFE_ID
from server.api.oip_proto import grpc_predict_v2_pb2 as pb
from server.api.oip_proto import grpc_predict_v2_pb2_grpc as pb_grpc
from server.errors import (
    ChexrayError,
    Conflict,
    InvalidInput,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
    UnprocessableInput,
    UnsupportedInput,
)
from server.service import Principal, Service
from server.service.accounts import Accounts, unknown_credential
from server.service.inference import Inference, InferRequest, Tensor, TensorMeta
from server.settings import Settings

log = logging.getLogger("chexray.api")

SERVICE = "inference.GRPCInferenceService"

# The current call's request id (set by `_rpc`), for the audit log.
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "grpc_request_id", default=None
)

# The one table from the service's kinds of error to gRPC statuses (HTTP's is in errors.py).
STATUS_OF_KIND: dict[type[ChexrayError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    TooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    UnsupportedInput: grpc.StatusCode.INVALID_ARGUMENT,
    UnprocessableInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# Where typed (not raw) contents keep each datatype's elements.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# Codes whose kind's status says less than the protocol can: a version installed but not
# loaded is a state of the server the caller may change (an administrator loads it).
STATUS_OF_CODE = {"version_not_loaded": grpc.StatusCode.FAILED_PRECONDITION}


def grpc_status(exc: ChexrayError) -> grpc.StatusCode:
    if exc.code in STATUS_OF_CODE:
        return STATUS_OF_CODE[exc.code]
    for kind in type(exc).__mro__:
        if kind in STATUS_OF_KIND:
            return STATUS_OF_KIND[kind]
    return grpc.StatusCode.INTERNAL


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _rpc(method: Handler) -> Handler:
    """Each call gets a request id (the caller's `x-request-id` if sane, sent back in the
    trailers) and, when tracing is on, its span; coded errors become the protocol's status
    and message; anything else is a bug, logged with the request id, and INTERNAL."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        given = metadata.get("x-request-id", "")
        rid = given if SAFE_ID.match(given) else uuid.uuid4().hex
        _request_id.set(rid)
        trailers = [("x-request-id", rid)]
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name}
        with tracing.request_span(f"{SERVICE}/{name}", metadata, rid, **attributes) as span:
            try:
                answer = await method(self, request, context)
                context.set_trailing_metadata(trailers)
                return answer
            except ChexrayError as exc:
                status, message = grpc_status(exc), oip.error_text(exc)
                if exc.retry_after is not None:
                    trailers.append(("retry-after", str(max(1, round(exc.retry_after)))))
                if status is grpc.StatusCode.INTERNAL:
                    log.error("gRPC %s (request %s): uncoded error: %s", name, rid, message)
            except Exception:
                log.exception("unexpected error in gRPC %s (request %s)", name, rid)
                status = grpc.StatusCode.INTERNAL
                message = f"internal_error: unexpected server error; quote request id {rid}"
            tracing.set_attributes(span, **{"rpc.grpc.status_code": status.value[0]})
        context.set_trailing_metadata(trailers)
        await context.abort(status, message)

    return handler


def _tensor_meta(t: TensorMeta) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=t.name, datatype=t.datatype, shape=list(t.shape)
    )


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> list:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(
            "invalid_datatype",
            f"input {tensor.name!r}: datatype {tensor.datatype!r} must come as raw contents "
            "or is not one this server reads",
        )
    return list(getattr(tensor.contents, field))


def infer_request(msg: pb.ModelInferRequest) -> InferRequest:
    """The service's request from the protocol's message (raw or typed contents)."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            "invalid_raw_contents",
            f"raw_input_contents holds {len(raw)} tensors for {len(msg.inputs)} inputs",
        )
    tensors: list[Tensor] = []
    for i, t in enumerate(msg.inputs):
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(
                    "invalid_raw_contents",
                    f"input {t.name!r} has contents while raw_input_contents is used",
                )
            tensors.append(oip.from_raw(t.name, t.datatype, list(t.shape), raw[i]))
        else:
            tensors.append(oip.from_values(t.name, t.datatype, list(t.shape), _contents(t)))
    outputs = tuple(o.name for o in msg.outputs)
    force = "force" in msg.parameters and msg.parameters["force"].bool_param
    return InferRequest(msg.model_name, tuple(tensors), msg.model_version, outputs, msg.id, force)


def peer_address(peer: str | None) -> str | None:
    """The address in gRPC's peer string: ipv4:10.0.0.5:51234, ipv6:[::1]:51234."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer[:64]


def _metadata_value(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, inference: Inference, accounts: Accounts, require_auth: bool = False
    ) -> None:
        self.inference = inference
        self.accounts = accounts
        self.require_auth = require_auth

    async def caller(self, context: grpc.aio.ServicerContext) -> Principal | None:
        """Who calls, from the metadata; Unauthenticated for a wrong credential, or for none
        when the server requires one. Any credential is good for inference, API keys too."""
        raw = credential(
            _metadata_value(context, "authorization"), _metadata_value(context, API_KEY_HEADER)
        )
        if raw is None:
            if self.require_auth:
                raise Unauthenticated("not_authenticated", NOT_AUTHENTICATED)
            return None
        principal = await self.accounts.principal(raw)
        if principal is None:
            raise unknown_credential(raw)
        return principal

    @_rpc
    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.inference.ready())

    @_rpc
    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:
        ready = await self.inference.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @_rpc
    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        meta = self.inference.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=list(oip.EXTENSIONS)
        )

    @_rpc
    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:
        meta = self.inference.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=list(meta.versions),
            platform=meta.platform,
            inputs=[_tensor_meta(t) for t in meta.inputs],
            outputs=[_tensor_meta(t) for t in meta.outputs],
        )

    @_rpc
    async def ModelInfer(self, request, context) -> pb.ModelInferResponse:
        caller = await self.caller(context)
        audit = who_asked(caller, "oip-grpc", peer_address(context.peer()), _request_id.get())
        # The message has arrived whole (gRPC bounds it): the whole request is admitted now.
        asked = dataclasses.replace(infer_request(request), audit=audit)
        answer = await self.inference.infer(asked)
        return pb.ModelInferResponse(
            model_name=answer.model_name,
            model_version=answer.model_version,
            id=answer.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name=t.name, datatype=t.datatype, shape=list(t.shape)
                )
                for t in answer.outputs
            ],
            raw_output_contents=[oip.to_raw(t) for t in answer.outputs],
        )


def address(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{host}:{settings.grpc_port}"


async def start(service: Service, settings: Settings) -> grpc.aio.Server:
    """The gRPC server, listening on CHEXRAY_GRPC_PORT in the running event loop;
    RuntimeError when it cannot listen there."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            # A port already taken must fail here, not be shared with its owner.
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=settings.max_connections,
    )
    servicer = InferenceServicer(service.inference, service.accounts, settings.require_auth)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    where = address(settings)
    try:
        port = server.add_insecure_port(where)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC cannot listen on {where} (CHEXRAY_GRPC_PORT): {exc}") from None
    if port == 0:
        raise RuntimeError(f"gRPC cannot listen on {where} (CHEXRAY_GRPC_PORT)")
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s", where)
    return server
