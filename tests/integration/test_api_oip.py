"""The Open Inference Protocol over REST (/v2) and gRPC in the app, on the tiny repository:
JSON and the binary tensor data extension built by hand (tritonclient's own requests are
tests/e2e/test_oip_tritonclient.py's), answers equal to /api/v1/predictions, and errors in
the protocol's form with the stable code, never a 500."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

import chexray
from server.runtime import contract
from tests.support import oip
from tests.support.api import client, xray
from tests.support.images import dicom_ramp, png_header_only
from tests.support.oip import OUTPUTS
from tests.support.server_process import free_port

INFER = "/v2/models/chexray/infer"


@pytest.fixture(scope="module")
def c(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("oip-rest")
    with client(
        tiny_repo, data, max_upload_bytes=200_000, max_request_bytes=600_000, max_queue=6
    ) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def json_infer(*files: bytes, outputs: list[str] | None = None, **extra) -> dict:
    body: dict = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(files)],
                "datatype": "BYTES",
                "data": list(map(b64, files)),
            }
        ],
        **extra,
    }
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def parse_binary(r) -> tuple[dict, dict[str, np.ndarray]]:
    """A response of the binary extension: its JSON and each output as an array."""
    size = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:size])
    arrays, pos = {}, size
    for out in head["outputs"]:
        dtype = {"FP32": "<f4", "BOOL": "|b1"}[out["datatype"]]
        if "parameters" in out:
            n = out["parameters"]["binary_data_size"]
            arrays[out["name"]] = np.frombuffer(r.content[pos : pos + n], dtype).reshape(
                out["shape"]
            )
            pos += n
        else:
            arrays[out["name"]] = np.asarray(out["data"], dtype).reshape(out["shape"])
    assert pos == len(r.content)
    return head, arrays


def oip_error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert message.startswith(f"{code}: "), message
    return message


def assert_like_api_v1(c, files: list[bytes], out: dict[str, np.ndarray]) -> None:
    refs = []
    for data in files:
        r = c.post(
            "/api/v1/predictions",
            content=data,
            headers={"content-type": "application/octet-stream"},
            params={"heatmap": "none"},
        )
        assert r.status_code == 200, r.text
        refs.append(r.json())
    assert set(out) == set(OUTPUTS)
    oip.assert_like_api_v1(out, refs)


def test_health_and_metadata(c) -> None:
    assert c.get("/v2").json() == {
        "name": "chexray",
        "version": chexray.__version__,
        "extensions": ["binary_tensor_data"],
    }
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").json() == {"ready": True}
    models = c.get("/api/v1/models").json()
    meta = c.get("/v2/models/chexray").json()
    assert meta["versions"] == [models["version"]]
    assert c.get(f"/v2/models/chexray/versions/{models['version']}").json() == meta
    h, w = models["input_size"]
    assert meta["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, h, w]},
    ]
    assert [o["name"] for o in meta["outputs"]] == OUTPUTS
    assert c.get("/v2/models/chexray/ready").json() == {"name": "chexray", "ready": True}
    # The protocol's own specification documents /v2; CheXray's schema is its own API.
    documented = c.get("/schema/openapi.json").json()["paths"]
    assert not [p for p in documented if p.startswith("/v2")]
    v = models["version"]
    assert c.get(f"/v2/models/chexray/versions/{v}/ready").status_code == 200
    oip_error(c.get("/v2/models/resnet50"), 404, "unknown_model")
    oip_error(c.get("/v2/models/resnet50/ready"), 404, "unknown_model")
    oip_error(c.get("/v2/models/chexray/versions/7/ready"), 404, "unknown_model_version")


def test_json_batch_answers_as_api_v1(c) -> None:
    files = [xray(seed=1), xray(seed=2, size=(300, 260)), dicom_ramp()]
    body = json_infer(*files, id="req-7")
    # base64 as `base64` writes it without -w0: broken into lines.
    data = body["inputs"][0]["data"]
    data[0] = "\n".join(data[0][i : i + 76] for i in range(0, len(data[0]), 76))
    r = c.post(INFER, json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["id"] == "req-7" and body["model_name"] == "chexray"
    out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in body["outputs"]}
    assert [o["datatype"] for o in body["outputs"]] == ["FP32"] * 4 + ["BOOL"]
    assert_like_api_v1(c, files, out)


def test_binary_extension_in_and_out(c) -> None:
    files = [xray(seed=3), xray(seed=4)]
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(length_prefixed(*files))},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    content, headers = binary_body(header, length_prefixed(*files))
    r = c.post(INFER, content=content, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    head, out = parse_binary(r)
    assert all("data" not in o for o in head["outputs"])
    assert_like_api_v1(c, files, out)
    # Per output: raw for one, JSON for the other, in the order asked.
    header["outputs"] = [
        {"name": "present", "parameters": {"binary_data": False}},
        {"name": "probabilities"},
    ]
    content, headers = binary_body(header, length_prefixed(*files))
    head, out2 = parse_binary(c.post(INFER, content=content, headers=headers))
    assert [o["name"] for o in head["outputs"]] == ["present", "probabilities"]
    assert "data" in head["outputs"][0] and "parameters" in head["outputs"][1]
    np.testing.assert_array_equal(out2["probabilities"], out["probabilities"])
    np.testing.assert_array_equal(out2["present"], out["present"])


def test_pixels_as_json_and_binary(c) -> None:
    h, w = c.get("/api/v1/models").json()["input_size"]
    pixels = np.random.default_rng(0).integers(0, 256, (2, h, w), dtype=np.uint8)
    as_json = {
        "inputs": [
            {"name": "pixels", "shape": [2, h, w], "datatype": "UINT8", "data": pixels.tolist()}
        ],
        "outputs": [{"name": "probabilities"}],
    }
    r = c.post(INFER, json=as_json)
    assert r.status_code == 200, r.text
    by_json = np.asarray(r.json()["outputs"][0]["data"], np.float32)
    header = {
        "inputs": [
            {
                "name": "pixels",
                "shape": [2, h, w],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": pixels.nbytes},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    content, headers = binary_body(header, pixels.tobytes())
    _, out = parse_binary(c.post(INFER, content=content, headers=headers))
    np.testing.assert_allclose(out["probabilities"].ravel(), by_json, atol=contract.FUSED_TOLERANCE)


def test_gzip_and_deflate_bodies(c) -> None:
    plain = json.dumps(json_infer(xray(seed=5), outputs=["probabilities"])).encode()
    want = c.post(INFER, content=plain).json()["outputs"]
    for encoding, packed in (("gzip", gzip.compress(plain)), ("deflate", zlib.compress(plain))):
        r = c.post(INFER, content=packed, headers={"Content-Encoding": encoding})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == want
    oip_error(
        c.post(INFER, content=b"\x1f\x8b not gzip", headers={"Content-Encoding": "gzip"}),
        400,
        "invalid_content_encoding",
    )
    oip_error(
        c.post(INFER, content=plain, headers={"Content-Encoding": "br"}),
        415,
        "unsupported_content_encoding",
    )
    # Inflated past the request limit (600 kB here): refused, not inflated into memory.
    bomb = gzip.compress(b"\0" * 2_000_000)
    oip_error(
        c.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"}),
        413,
        "payload_too_large",
    )


def one_input(name: str, shape: list[int], datatype: str, **fields) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "shape": shape, "datatype": datatype, **fields}]}
    ).encode()


def sized(size: object, blob: bytes) -> tuple[bytes, dict[str, str]]:
    params = {"binary_data_size": size}
    return binary_body(json.loads(one_input("image", [1], "BYTES", parameters=params)), blob)


AA = base64.b64encode(b"\0").decode()
BAD_BODIES = [
    (b"{not json", {}, 400, "invalid_request"),
    (b'{"inputs": "image"}', {}, 400, "invalid_request"),
    (json.dumps(json_infer(b"GIF89a")).encode(), {}, 400, "unsupported_format"),
    (json.dumps(json_infer(xray()[:200])).encode(), {}, 400, "corrupt_image"),
    (json.dumps(json_infer(b"")).encode(), {}, 400, "empty_image"),
    (json.dumps(json_infer(png_header_only(30000, 30000))).encode(), {}, 413,
     "image_too_many_pixels"),
    (json.dumps(json_infer(b"\0" * 250_000)).encode(), {}, 413, "image_too_large"),
    (json.dumps(json_infer(xray(), outputs=["heatmap"])).encode(), {}, 400, "unknown_output"),
    (one_input("image", [1], "BYTES", data=["%%%"]), {}, 400, "invalid_base64"),
    (one_input("image", [1], "BYTES"), {}, 400, "invalid_tensor_data"),
    (one_input("image", [2], "BYTES", data=[AA]), {}, 400, "invalid_tensor_size"),
    (one_input("image", [1], "FP32", data=[1.0]), {}, 400, "invalid_datatype"),
    (one_input("pixels", [1, 2, 2], "UINT8", data=[1, 2, 3, 4]), {}, 400, "invalid_shape"),
    (one_input("image", [7], "BYTES", data=[AA] * 7), {}, 413, "too_many_images"),
    (b'{"inputs": []}xx', {"Inference-Header-Content-Length": "99"}, 400,
     "invalid_header_length"),
    (*sized(50, b"short"), 400, "invalid_binary_data"),
    (*sized(True, b"x"), 400, "invalid_binary_data"),
    (b'{"inputs": []}left over', {"Inference-Header-Content-Length": "14"}, 400,
     "invalid_binary_data"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "headers", "status", "code"), BAD_BODIES)
def test_bad_requests_are_4xx_with_the_code(c, content, headers, status, code) -> None:
    oip_error(c.post(INFER, content=content, headers=headers), status, code)


def test_unknown_models_and_oversized_bodies(c) -> None:
    body = json_infer(xray())
    oip_error(c.post("/v2/models/densenet/infer", json=body), 404, "unknown_model")
    oip_error(
        c.post("/v2/models/chexray/versions/0/infer", json=body), 404, "unknown_model_version"
    )
    version = c.get("/v2/models/chexray").json()["versions"][0]
    assert c.post(f"/v2/models/chexray/versions/{version}/infer", json=body).status_code == 200
    message = oip_error(c.post(INFER, content=b"\0" * 700_000), 413, "payload_too_large")
    assert "CHEXRAY_MAX_REQUEST_BYTES" in message
    # A bad request leaves no place taken.
    assert c.app.state.service.engines.in_flight == 0


def test_refused_when_over_budget_with_retry_after(tiny_repo: Path, tmp_path: Path) -> None:
    with client(tiny_repo, tmp_path, max_queue_wait_ms=0) as c:
        service = c.app.state.service
        with service.predictions.admit():  # one analysis in progress: any wait is too long
            r = c.post(INFER, json=json_infer(xray()))
        message = oip_error(r, 503, "overloaded")
        assert "budget" in message and int(r.headers["retry-after"]) >= 1
        assert c.post(INFER, json=json_infer(xray())).status_code == 200


def test_grpc_errors_carry_the_status_and_the_code(tiny_repo: Path, tmp_path: Path) -> None:
    tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
    import grpc
    from tritonclient.utils import InferenceServerException

    port = free_port()
    with client(tiny_repo, tmp_path, grpc_port=port, max_queue_wait_ms=0) as c:
        triton = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        assert triton.is_server_live() and triton.is_server_ready()

        def infer(*files: bytes, model: str = "chexray", version: str = ""):
            t = tritonclient_grpc.InferInput("image", [len(files)], "BYTES")
            t.set_data_from_numpy(np.array(list(files), dtype=object))
            return triton.infer(model, [t], model_version=version)

        def refused(code: grpc.StatusCode, stable: str, *args, **kw) -> None:
            with pytest.raises(InferenceServerException) as info:
                infer(*args, **kw)
            assert info.value.status() == str(code), info.value
            assert info.value.message().startswith(f"{stable}: "), info.value.message()

        refused(grpc.StatusCode.NOT_FOUND, "unknown_model", xray(), model="densenet")
        refused(grpc.StatusCode.NOT_FOUND, "unknown_model_version", xray(), version="0")
        refused(grpc.StatusCode.INVALID_ARGUMENT, "unsupported_format", b"GIF89a")
        refused(grpc.StatusCode.INVALID_ARGUMENT, "image_too_large", b"\0" * 40_000_000)
        with pytest.raises(InferenceServerException) as info:
            triton.get_model_metadata("densenet")
        assert info.value.status() == str(grpc.StatusCode.NOT_FOUND)
        with c.app.state.service.predictions.admit():
            refused(grpc.StatusCode.UNAVAILABLE, "overloaded", xray())
            assert triton.is_server_ready()
        assert infer(xray()).as_numpy("probabilities").shape == (1, 5)
        # Over CHEXRAY_MAX_REQUEST_BYTES (64 MiB by default): gRPC itself refuses it.
        with pytest.raises(InferenceServerException) as info:
            infer(b"\0" * 70_000_000)
        assert info.value.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert c.app.state.service.engines.in_flight == 0
        c.app.state.service.engines.drain()
        assert not triton.is_server_ready() and not triton.is_model_ready("chexray")
        triton.close()


def test_grpc_typed_contents_and_the_retry_after_trailer(tiny_repo: Path, tmp_path: Path):
    """Through the generated stub itself: inputs as typed contents instead of raw bytes,
    and the seconds to wait in the `retry-after` trailer of a refusal."""
    import grpc

    from server.api.oip_proto import grpc_predict_v2_pb2 as pb
    from server.api.oip_proto import grpc_predict_v2_pb2_grpc as pb_grpc

    port = free_port()
    with (
        client(tiny_repo, tmp_path, grpc_port=port, max_queue=2) as c,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        h, w = c.get("/api/v1/models").json()["input_size"]
        pixels = np.random.default_rng(1).integers(0, 256, (1, h, w), dtype=np.uint8)
        typed = pb.ModelInferRequest(model_name="chexray", id="typed")
        t = typed.inputs.add(name="pixels", datatype="UINT8", shape=[1, h, w])
        t.contents.uint_contents.extend(pixels.ravel().tolist())
        typed.outputs.add(name="probabilities")
        raw = pb.ModelInferRequest(model_name="chexray", raw_input_contents=[pixels.tobytes()])
        raw.inputs.add(name="pixels", datatype="UINT8", shape=[1, h, w])
        a, b = stub.ModelInfer(typed), stub.ModelInfer(raw)
        assert a.id == "typed" and [o.name for o in a.outputs] == ["probabilities"]
        assert [o.name for o in b.outputs] == OUTPUTS
        assert a.raw_output_contents[0] == b.raw_output_contents[0]
        files = pb.ModelInferRequest(model_name="chexray")
        f = files.inputs.add(name="image", datatype="BYTES", shape=[2])
        f.contents.bytes_contents.extend([xray(seed=1), xray(seed=2)])
        answer = stub.ModelInfer(files)
        assert list(answer.outputs[0].shape) == [2, 5]
        mixed = pb.ModelInferRequest(model_name="chexray", raw_input_contents=[b"x", b"y"])
        mixed.inputs.add(name="image", datatype="BYTES", shape=[1])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(mixed)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("invalid_raw_contents: ")
        predictions = c.app.state.service.predictions
        # Two analyses in progress, the most this server takes: no room for more.
        with predictions.admit(), predictions.admit(), pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(files)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details().startswith("overloaded: 2 analyses are in progress")
        trailer = dict(info.value.trailing_metadata())
        assert int(trailer["retry-after"]) >= 1
        assert stub.ModelReady(pb.ModelReadyRequest(name="chexray")).ready
        assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_both_front_ends_are_traced_under_the_callers_parent(tiny_repo: Path, tmp_path: Path):
    pytest.importorskip("opentelemetry.sdk")
    import grpc
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from server import tracing
    from server.api.oip_proto import grpc_predict_v2_pb2 as pb
    from server.api.oip_proto import grpc_predict_v2_pb2_grpc as pb_grpc

    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traceparent = f"00-{trace_id}-{parent}-01"
    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    try:
        with (
            client(tiny_repo, tmp_path, grpc_port=port) as c,
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            tracing.configure(True, provider)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            msg = pb.ModelInferRequest(
                model_name="chexray", raw_input_contents=[length_prefixed(xray())]
            )
            msg.inputs.add(name="image", datatype="BYTES", shape=[1])
            _, call = stub.ModelInfer.with_call(
                msg, metadata=[("traceparent", traceparent), ("x-request-id", "rpc-7")]
            )
            assert dict(call.trailing_metadata())["x-request-id"] == "rpc-7"
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelMetadata(pb.ModelMetadataRequest(name="densenet"))
            rid = dict(info.value.trailing_metadata())["x-request-id"]
            r = c.post(INFER, json=json_infer(xray()), headers={"traceparent": traceparent})
            assert r.status_code == 200
    finally:
        tracing.configure(False)
    spans = exporter.get_finished_spans()
    roots = {s.name: s for s in spans if s.kind == SpanKind.SERVER}
    rpc = roots["inference.GRPCInferenceService/ModelInfer"]
    rest = roots["POST /v2/models/{model_name}/infer"]
    failed = roots["inference.GRPCInferenceService/ModelMetadata"]
    assert rpc.attributes["chexray.request_id"] == "rpc-7"
    assert failed.attributes["chexray.request_id"] == rid
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    for root in (rpc, rest):
        assert format(root.context.trace_id, "032x") == trace_id
        assert format(root.parent.span_id, "016x") == parent
        children = {s.name for s in spans if s.parent and s.parent.span_id == root.context.span_id}
        assert {"decode", "preprocess", "queue_wait", "compute"} <= children, root.name
