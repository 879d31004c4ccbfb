"""Inference on named tensors, below the Open Inference Protocol's front ends (REST and gRPC):
tensors in -> the engine (the same admission and dynamic batcher as /api/v1/predictions) ->
named output arrays. Protocol-neutral: the front ends turn their wire formats into these
types and the errors (server/errors.py kinds, each with a stable code) into their own
statuses.

One model, `chexray`, in the versions loaded: the one served (the manifest's), and a canary
or shadow candidate while one runs; a request names one of them or takes the served one
(or, during a canary, the candidate for its share of requests). Its inputs, exactly one per request:

    image    BYTES [-1]          each element one encoded file: PNG, JPEG or DICOM
    pixels   UINT8 [-1, H, W]    already preprocessed, at the manifest's input size

and its outputs (those asked for; all when none are named): the fused graph's, by the
manifest's names, and `present`, the calls at the manifest's thresholds:

    probabilities         FP32 [-1, 5]         FINDINGS order
    member_probabilities  FP32 [-1, M, 5]      members in the manifest's order
    cam_probabilities     FP32 [-1, 5]
    cam_maps              FP32 [-1, 5, h, w]   raw class activation maps
    present               BOOL [-1, 5]

A request of N images counts as N analyses for admission: admitted whole or refused whole.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from chexray import __version__
from server.errors import ChexrayError, InvalidInput, NotFound, TooLarge, Unavailable
from server.runtime import contract
from server.runtime.decode import detect_format
from server.runtime.engine import Engine, Prediction
from server.runtime.findings import FINDINGS
from server.runtime.state import EngineState
from server.service.audit import AuditContext, AuditLog, entry, now

log = logging.getLogger("chexray")

MODEL = "chexray"
SERVER = "chexray"
IMAGE = "image"
PIXELS = "pixels"
PRESENT = "present"

# The protocol's names of the tensor element types this model uses.
DATATYPE_OF_DTYPE = {"float32": "FP32", "uint8": "UINT8", "bool": "BOOL"}
# The graph's platform, in Triton's words, by the backend that runs it.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}

Readiness = Callable[[], Awaitable[tuple[dict[str, bool], str | None]]]


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size


@dataclass(frozen=True)
class ModelMeta:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]


@dataclass(frozen=True)
class ServerMeta:
    name: str
    version: str


@dataclass(frozen=True)
class Tensor:
    """`data` has the tensor's shape; BYTES elements are `bytes` in an object array."""

    name: str
    datatype: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    inputs: tuple[Tensor, ...]
    model_version: str = ""  # empty: the version served
    outputs: tuple[str, ...] = ()  # empty: every output
    id: str = ""
    # The request parameter `force`: analyse DICOMs outside the intended use
    # (server/runtime/intended_use.py) instead of refusing them.
    force: bool = False
    # Who asked, for the audit log (one record per image); None: not recorded.
    audit: AuditContext | None = None


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: tuple[Tensor, ...]
    id: str = ""


def _invalid(code: str, message: str, detail: object | None = None) -> InvalidInput:
    return InvalidInput(code, message, detail)


class Inference:
    def __init__(
        self,
        engines: EngineState,
        readiness: Readiness,
        max_images: int,
        audit: AuditLog | None = None,
    ) -> None:
        """`readiness`: the server's own checks (those of /health/ready); `max_images`: the
        most images one request may hold (the analyses the server takes at once); `audit`:
        where requests with an AuditContext are recorded."""
        self._engines = engines
        self._readiness = readiness
        self.max_images = max_images
        self.audit = audit

    # -- health and metadata ---------------------------------------------------------------

    def server_metadata(self) -> ServerMeta:
        return ServerMeta(SERVER, __version__)

    async def ready(self) -> bool:
        """Ready exactly when /health/ready says so."""
        checks, _ = await self._readiness()
        return all(checks.values())

    def _served(self) -> Engine:
        """The loaded engine (warmed up or not), for what the manifest says; Unavailable
        while the models load or when they failed to."""
        engine = self._engines.engine
        if engine is None:
            return self._engines.require()  # raises the coded reason
        return engine

    def check_model(self, name: str, version: str = "") -> str:
        """The version that answers for `name` and `version` (empty: the served one):
        NotFound for another model or a version never installed, Conflict
        `version_not_loaded` for one installed but not loaded."""
        served = self._served().manifest.version
        if name != MODEL:
            raise NotFound("unknown_model", f"no model named {name!r}: this server has {MODEL!r}")
        if version and version != served:
            return self._engines.choose(version).version
        return served

    async def model_ready(self, name: str, version: str = "") -> bool:
        self.check_model(name, version)
        return await self.ready()

    def model_metadata(self, name: str, version: str = "") -> ModelMeta:
        self.check_model(name, version)
        engine = self._engines.choose(version) if version else self._served()
        h, w = engine.input_size
        outputs = [
            TensorMeta(o.name, DATATYPE_OF_DTYPE[o.dtype], tuple(_dim(d) for d in o.shape))
            for o in engine.manifest.outputs
        ]
        outputs.append(TensorMeta(PRESENT, "BOOL", (-1, len(FINDINGS))))
        return ModelMeta(
            MODEL,
            tuple(self._engines.versions()),  # the served one first
            PLATFORMS.get(engine.choice.backend, engine.choice.backend),
            (TensorMeta(IMAGE, "BYTES", (-1,)), TensorMeta(PIXELS, "UINT8", (-1, h, w))),
            tuple(outputs),
        )

    # -- inference -------------------------------------------------------------------------

    @contextmanager
    def admit(
        self, version: str = "", key: str | None = None, audit: AuditContext | None = None
    ) -> Iterator[None]:
        """One analysis's place, taken before a request's body is read (Overloaded, 503,
        when the wait would exceed the budget), with the engine of `version` (empty: the
        served one, or a canary's for its share of `key`s); `infer(admitted=1)` takes the
        rest with the same engine. A refusal is recorded in the audit log under `audit`,
        when given."""
        with ExitStack() as place:
            try:
                place.enter_context(self._engines.admit(1, version, key))
            except ChexrayError as exc:
                if self._auditing(audit):
                    assert audit is not None and self.audit is not None
                    served = version or self._version()["model_version"]
                    self.audit.append_nowait(entry(audit, now(), error=exc, model_version=served))
                raise
            yield

    def _auditing(self, audit: AuditContext | None) -> bool:
        return audit is not None and self.audit is not None and self.audit.enabled

    def _version(self) -> dict[str, str | None]:
        engine = self._engines.engine
        return {"model_version": engine.manifest.version if engine is not None else None}

    async def infer(self, request: InferRequest, admitted: int = 0) -> InferResponse:
        """Run the request's images through the engine; `admitted`: places the caller holds
        already for this request (see `admit`). Raises a coded ChexrayError for bad input
        (the element at fault named), unknown models, and an engine that cannot take it.

        With `request.audit`, each image is recorded in the audit log: answered, or
        refused (the element at fault with its own code, the others with the request's);
        a request refused before its images are known is one refused record. The answer
        leaves only once its records are committed."""
        if not self._auditing(request.audit):
            try:
                return (await self._infer(request, admitted))[0]
            except _Refused as refused:
                raise refused.error from None
        assert request.audit is not None and self.audit is not None
        started, start = now(), time.perf_counter()
        try:
            response, tensor, results = await self._infer(request, admitted)
        except _Refused as refused:
            records = self._records(request, started, start, refused.tensor, refused.results)
            await self._append(records, refused.error)
            raise refused.error from None
        except Exception as exc:
            record = entry(
                request.audit,
                started,
                total_ms=(time.perf_counter() - start) * 1e3,
                error=exc if isinstance(exc, ChexrayError) else "internal_error",
                **self._version(),
            )
            await self._append([record], exc)
            raise
        await self.audit.append(*self._records(request, started, start, tensor, results))
        return response

    async def _append(self, records: list[dict[str, object]], error: BaseException) -> None:
        assert self.audit is not None
        try:
            await self.audit.append(*records)
        except ChexrayError as exc:  # the refusal itself is what the caller hears about
            log.warning("audit log: a refusal (%s) was not recorded: %s", error, exc)

    def _records(
        self,
        request: InferRequest,
        started: dt.datetime,
        start: float,
        tensor: Tensor,
        results: list[Prediction | BaseException],
    ) -> list[dict[str, object]]:
        assert request.audit is not None
        total_ms = (time.perf_counter() - start) * 1e3
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        request_error = _code(failed) if failed is not None else None
        records = []
        for x, result in zip(tensor.data, results, strict=True):
            raw = bytes(x) if tensor.name == IMAGE else np.ascontiguousarray(x).tobytes()
            # An image decoded for an answer was hashed beside its decoding, off the loop.
            known = result.image.sha256 if isinstance(result, Prediction) else None
            common = {
                "digest": known or hashlib.sha256(raw).hexdigest(),
                "size": len(raw),
                "forced": request.force,
                "total_ms": total_ms,
            }
            if isinstance(result, BaseException):
                error = _code(result)
                kind = _format(raw) if tensor.name == IMAGE else PIXELS
                records.append(
                    entry(
                        request.audit,
                        started,
                        image_format=kind,
                        error=error,
                        **common,
                        **self._version(),
                    )
                )
            elif request_error is not None:
                records.append(
                    entry(
                        request.audit,
                        started,
                        image_format=result.image.format if tensor.name == IMAGE else PIXELS,
                        error=request_error,
                        model_version=result.model_version,
                        **common,
                    )
                )
            else:
                records.append(entry(request.audit, started, prediction=result, **common))
        return records

    async def _infer(
        self, request: InferRequest, admitted: int = 0
    ) -> tuple[InferResponse, Tensor, list[Prediction | BaseException]]:
        self.check_model(request.model_name, request.model_version)
        # The engine this request was admitted to (see `admit`), else the one for it now.
        engine = self._engines.current(request.model_version)
        version = engine.version
        outputs = self._outputs(engine, request.outputs)
        tensor = self._input(engine, request.inputs)
        count = tensor.shape[0]
        more = count - admitted
        with engine.admission.admit(more) if more > 0 else nullcontext():
            if tensor.name == IMAGE:
                calls = [engine.predict(bytes(x), request.force) for x in tensor.data]
            else:
                calls = [engine.predict_pixels(x) for x in tensor.data]
            # Every image finishes (or fails) before the places are given back.
            results = await asyncio.gather(*calls, return_exceptions=True)
        predictions = []
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                error = _located(result, tensor.name, i, count)
                raise _Refused(error, tensor, results) from error
            predictions.append(result)
        arrays = _arrays(engine, predictions)
        response = InferResponse(
            MODEL,
            version,
            tuple(Tensor(name, _datatype(arrays[name]), arrays[name]) for name in outputs),
            request.id,
        )
        return response, tensor, list(results)

    def _outputs(self, engine: Engine, asked: tuple[str, ...]) -> list[str]:
        known = [o.name for o in engine.manifest.outputs] + [PRESENT]
        unknown = [name for name in asked if name not in known]
        if unknown:
            raise _invalid(
                "unknown_output",
                f"model {MODEL!r} has no output {unknown[0]!r}: its outputs are "
                + ", ".join(known),
            )
        return list(dict.fromkeys(asked)) or known

    def _input(self, engine: Engine, inputs: tuple[Tensor, ...]) -> Tensor:
        h, w = engine.input_size
        if len(inputs) != 1:
            raise _invalid(
                "invalid_inputs",
                f"send exactly one input, {IMAGE!r} (BYTES [-1], encoded files) or {PIXELS!r} "
                f"(UINT8 [-1, {h}, {w}]), not {len(inputs)}",
            )
        tensor = inputs[0]
        if tensor.name == IMAGE:
            expected, shape_ok = "BYTES", len(tensor.shape) == 1
            wanted = "[-1] (one element per file)"
        elif tensor.name == PIXELS:
            expected, shape_ok = "UINT8", len(tensor.shape) == 3 and tensor.shape[1:] == (h, w)
            wanted = f"[-1, {h}, {w}] (the model's input size)"
        else:
            raise _invalid(
                "unknown_input",
                f"model {MODEL!r} has no input {tensor.name!r}: send {IMAGE!r} or {PIXELS!r}",
            )
        if tensor.datatype != expected:
            raise _invalid(
                "invalid_datatype",
                f"input {tensor.name!r} must be {expected}, not {tensor.datatype}",
            )
        if not shape_ok:
            raise _invalid(
                "invalid_shape",
                f"input {tensor.name!r} must have shape {wanted}, not {list(tensor.shape)}",
            )
        count = tensor.shape[0]
        if count == 0:
            raise _invalid("empty_input", f"input {tensor.name!r} holds no image")
        if count > self.max_images:
            raise TooLarge(
                "too_many_images",
                f"input {tensor.name!r} holds {count} images; one request may hold at most "
                f"{self.max_images} (send several requests)",
            )
        return tensor


class _Refused(Exception):
    """An image of the request failed: the error to raise, and every image's outcome."""

    def __init__(
        self, error: BaseException, tensor: Tensor, results: list[Prediction | BaseException]
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.tensor = tensor
        self.results = results


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, ChexrayError) else "internal_error"


def _format(raw: bytes) -> str | None:
    try:
        return detect_format(raw)
    except ChexrayError:
        return None


def _dim(d: int | str) -> int:
    return d if isinstance(d, int) else -1


def _datatype(array: np.ndarray) -> str:
    return DATATYPE_OF_DTYPE[array.dtype.name]


def _arrays(engine: Engine, predictions: list[Prediction]) -> dict[str, np.ndarray]:
    """Every output, one row per image, in the request's order."""
    members = [m.name for m in engine.manifest.members]
    return {
        contract.PROBABILITIES: np.stack([p.probabilities for p in predictions]).astype(np.float32),
        contract.MEMBER_PROBABILITIES: np.stack(
            [np.stack([p.member_probabilities[m] for m in members]) for p in predictions]
        ).astype(np.float32),
        contract.CAM_PROBABILITIES: np.stack([p.cam_probabilities for p in predictions]).astype(
            np.float32
        ),
        contract.CAM_MAPS: np.stack([p.cam_maps for p in predictions]).astype(np.float32),
        PRESENT: np.stack([p.calls for p in predictions]).astype(bool),
    }


def _located(exc: BaseException, name: str, index: int, count: int) -> BaseException:
    """Name the element at fault in a bad image's error (the engine's errors say what is
    wrong, not which of several images it is)."""
    if not isinstance(exc, ChexrayError) or isinstance(exc, Unavailable):
        return exc
    if count > 1:
        exc.message = f"input {name!r}, element {index}: {exc.message}"
        exc.args = (exc.message,)
    if exc.detail is None:
        exc.detail = {"input": name, "index": index}
    return exc
