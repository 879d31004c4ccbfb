"""OpenTelemetry tracing: a span per request, with children for decode, queue wait, compute
(with the batch size), heatmap and store, each carrying the request id.

Off by default (`CHEXRAY_TRACING`), and then free: nothing of OpenTelemetry is imported and
every call here returns at once. On, spans go to the OTLP exporter, configured by the
standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...); a caller's
W3C `traceparent` makes the request's span a child of the caller's.

Work that runs batched or in worker threads (decode, queue wait, compute) is recorded after
the fact from its measured start and end, so no context has to cross threads.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

log = logging.getLogger("chexray")

_tracer: Any = None  # an opentelemetry Tracer while tracing is on


def configure(enabled: bool, provider: Any = None) -> None:
    """Turn tracing on (spans to `provider`, else an OTLP exporter from OTEL_* variables) or
    off. The provider stays CheXray's own, so an embedding process's global one is untouched."""
    global _tracer
    if not enabled:
        _tracer = None
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise RuntimeError(
            "CHEXRAY_TRACING is on but OpenTelemetry is not installed: "
            "pip install 'chexray[tracing]'"
        ) from None
    if provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, win over this default.
        provider = TracerProvider(resource=Resource.create({"service.name": "chexray"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("tracing on: spans to the OTLP exporter (OTEL_EXPORTER_OTLP_* variables)")
    _tracer = provider.get_tracer("chexray")


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def request_span(
    name: str,
    headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]],
    request_id: str,
    **attributes: object,
) -> Iterator[Any]:
    """The span of one request (HTTP or gRPC), a child of the caller's `traceparent` if it
    sent one; the spans opened while it is current become its children. `headers`: a
    mapping (gRPC metadata) or ASGI's raw header pairs, read only when tracing is on."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    if isinstance(headers, Mapping):
        carrier = {str(k).lower(): str(v) for k, v in headers.items()}
    else:
        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
    with _tracer.start_as_current_span(
        name,
        context=extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"chexray.request_id": request_id, **_clean(attributes)},
    ) as span:
        yield span


@contextlib.contextmanager
def span(name: str, **attributes: object) -> Iterator[None]:
    """A child span of the current one around a block of work on the event loop."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=_attributes(attributes)):
        yield


def record(name: str, start_ns: int, end_ns: int, **attributes: object) -> None:
    """A child span of the current one for work already done elsewhere (a worker thread, a
    batch), from its measured wall-clock start and end."""
    if _tracer is None:
        return
    s = _tracer.start_span(name, start_time=start_ns, attributes=_attributes(attributes))
    s.end(end_time=end_ns)


def set_attributes(target: Any, name: str | None = None, **attributes: object) -> None:
    """Name a span from `request_span` and add attributes (ignored when tracing is off)."""
    if target is not None:
        if name is not None:
            target.update_name(name)
        target.set_attributes(_clean(attributes))


def now_ns() -> int:
    return time.time_ns()


def _attributes(attributes: Mapping[str, object]) -> dict[str, object]:
    """The request id of the current request span rides on every child."""
    from opentelemetry import trace

    current = trace.get_current_span()
    rid = getattr(current, "attributes", {}).get("chexray.request_id")
    extra = {"chexray.request_id": rid} if rid else {}
    return {**extra, **_clean(attributes)}


def _clean(attributes: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in attributes.items() if v is not None}
