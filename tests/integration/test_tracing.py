"""OpenTelemetry: one span per request, a child of the caller's traceparent, with children for
decode, preprocess, queue wait, compute, heatmap and store, all carrying the request id;
read from the SDK's in-memory exporter. Off, no tracer, SDK or propagator is even imported."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from server import tracing
from tests.support import ROOT
from tests.support.api import client, post_image, register, xray

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, provider
    tracing.configure(False)


def test_a_prediction_is_one_trace_under_the_callers_parent(
    tiny_repo: Path, tmp_path: Path, spans
) -> None:
    exporter, provider = spans
    with client(tiny_repo, tmp_path) as c:
        tracing.configure(True, provider)
        auth = register(c, "tracy")
        exporter.clear()
        r = post_image(
            c,
            xray(3),
            headers={**auth, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            heatmap="inline",
        )
        assert r.status_code == 200, r.text
        rid = r.headers["x-request-id"]
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    root = by_name["POST /api/v1/predictions"]
    assert root.kind == SpanKind.SERVER
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["chexray.request_id"] == rid
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["http.route"] == "/api/v1/predictions"
    children = ["decode", "preprocess", "queue_wait", "compute", "heatmap", "store"]
    for name in children:
        span = by_name[name]
        assert span.parent.span_id == root.context.span_id, name
        assert span.context.trace_id == root.context.trace_id
        assert span.attributes["chexray.request_id"] == rid, name
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, name
    assert by_name["compute"].attributes["batch.size"] == 1
    assert by_name["decode"].attributes["image.format"] == "png"
    # In order: decode, then preprocess, queue wait, compute.
    order = [by_name[n] for n in ("decode", "preprocess", "queue_wait", "compute")]
    assert all(a.end_time <= b.start_time + 1000 for a, b in itertools.pairwise(order))


def test_without_a_traceparent_each_request_starts_its_own_trace(
    tiny_repo: Path, tmp_path: Path, spans
) -> None:
    exporter, provider = spans
    with client(tiny_repo, tmp_path) as c:
        tracing.configure(True, provider)
        exporter.clear()
        assert c.get("/api/v1/studies").status_code == 401
        assert post_image(c, xray(4), heatmap="none").status_code == 200
    roots = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in roots] == ["GET /api/v1/studies", "POST /api/v1/predictions"]
    assert roots[0].parent is None and roots[1].parent is None
    assert roots[0].context.trace_id != roots[1].context.trace_id
    assert roots[0].attributes["http.response.status_code"] == 401


def test_off_by_default_and_then_opentelemetry_is_not_imported(tiny_repo: Path, tmp_path: Path):
    # Litestar itself imports the bare `opentelemetry` package and its semantic conventions
    # when they are installed; neither the tracer, the SDK nor the propagator may load.
    code = f"""
import sys
from tests.support.api import client, post_image, xray
from pathlib import Path
with client(Path({str(tiny_repo)!r}), Path({str(tmp_path)!r})) as c:
    assert post_image(c, xray(1), heatmap="none").status_code == 200
used = ("opentelemetry.sdk", "opentelemetry.trace", "opentelemetry.propagate")
print(sorted(m for m in sys.modules if m.startswith(used)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
