"""The Open Inference Protocol through the real client library, tritonclient, against a real
`chexray serve` process: HTTP and gRPC, sync and async, binary data and JSON, a batch of
several files (PNG, JPEG, DICOM) and the `pixels` input, each answer equal to
/api/v1/predictions for the same files. Requests of every protocol share one batcher and
one admission."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.support import ROOT
from tests.support.api import PASSWORD, post_image
from tests.support.images import anatomy, dicom, jpeg, png
from tests.support.oip import OUTPUTS, assert_like_api_v1
from tests.support.server_process import free_port, running_server
from tests.support.slow_uploads import finish_upload, start_upload, wait_in_flight

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
import grpc  # noqa: E402  (after the skip: tritonclient brings it)
import tritonclient.grpc.aio as grpc_aio  # noqa: E402
import tritonclient.http.aio as http_aio  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "chexray"


def grey(seed: int, size: tuple[int, int]) -> np.ndarray:
    return np.rint(anatomy(*size, seed=seed) * 255).astype(np.uint8)


FILES = [
    png(grey(11, (240, 200))),
    jpeg(grey(12, (300, 260))),
    dicom(np.rint(anatomy(256, 256, seed=13) * 4095).astype(np.uint16)),
    png(grey(14, (200, 240))),
]


class Server:
    def __init__(self, base: str, grpc_port: int) -> None:
        self.base = base
        self.http_url = urlsplit(base).netloc
        self.grpc_url = f"127.0.0.1:{grpc_port}"

    def reference(self, data: bytes) -> dict:
        """/api/v1/predictions' answer for one file."""
        with httpx.Client(base_url=self.base, timeout=30) as h:
            r = post_image(h, data, "application/octet-stream", heatmap="none")
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    root = tmp_path_factory.mktemp("oip-e2e")
    with running_server(tiny_repo, root, CHEXRAY_GRPC_PORT=str(port)) as (base, proc):
        yield Server(base, port)
        assert proc.poll() is None


@pytest.fixture(scope="module")
def strict_server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server that analyses for signed-in callers only (CHEXRAY_REQUIRE_AUTH)."""
    port = free_port()
    root = tmp_path_factory.mktemp("oip-e2e-strict")
    with running_server(
        tiny_repo, root, CHEXRAY_GRPC_PORT=str(port), CHEXRAY_REQUIRE_AUTH="true"
    ) as (base, proc):
        yield Server(base, port)
        assert proc.poll() is None


@pytest.fixture(scope="module")
def references(server: Server) -> list[dict]:
    return [server.reference(f) for f in FILES]


def images(module, files: list[bytes], binary: bool = True):
    t = module.InferInput("image", [len(files)], "BYTES")
    if module is httpclient:
        t.set_data_from_numpy(np.array(files, dtype=object), binary_data=binary)
    else:
        t.set_data_from_numpy(np.array(files, dtype=object))
    return t


def every_output(result) -> dict[str, np.ndarray]:
    return {name: result.as_numpy(name) for name in OUTPUTS}


def test_http_sync_health_metadata_and_a_binary_batch(server: Server, references) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL)
        assert not client.is_model_ready("densenet")
        meta = client.get_server_metadata()
        assert meta["name"] == "chexray" and "binary_tensor_data" in meta["extensions"]
        model = client.get_model_metadata(MODEL)
        version = references[0]["model_version"]
        assert model["versions"] == [version]
        assert [o["name"] for o in model["outputs"]] == OUTPUTS
        # No outputs named: all of them, raw (tritonclient asks binary_data_output).
        result = client.infer(MODEL, [images(httpclient, FILES)], request_id="batch-1")
        assert result.get_response()["id"] == "batch-1"
        assert result.get_response()["model_version"] == version
        out = every_output(result)
        assert out["probabilities"].shape == (4, 5) and out["present"].dtype == np.bool_
        assert_like_api_v1(out, references)
        # The version named in the path, the other outputs left out.
        two = client.infer(
            MODEL,
            [images(httpclient, FILES[:2])],
            model_version=version,
            outputs=[httpclient.InferRequestedOutput("present")],
        )
        assert two.as_numpy("probabilities") is None
        np.testing.assert_array_equal(two.as_numpy("present"), out["present"][:2])
    finally:
        client.close()


def test_http_json_both_ways_and_a_gzip_body(server: Server, references) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        # Without the binary extension a BYTES element is JSON text: the file in base64.
        encoded = [base64.b64encode(f) for f in FILES[:3]]
        outputs = [
            httpclient.InferRequestedOutput("probabilities", binary_data=False),
            httpclient.InferRequestedOutput("cam_maps", binary_data=False),
            httpclient.InferRequestedOutput("present", binary_data=False),
        ]
        result = client.infer(MODEL, [images(httpclient, encoded, binary=False)], outputs=outputs)
        response = result.get_response()
        assert all("data" in o for o in response["outputs"])
        out = {n: result.as_numpy(n) for n in ("probabilities", "cam_maps", "present")}
        assert_like_api_v1(out, references[:3])
        packed = client.infer(
            MODEL, [images(httpclient, FILES[:3])], request_compression_algorithm="gzip"
        )
        assert_like_api_v1(every_output(packed), references[:3])
    finally:
        client.close()


def test_http_async_clients(server: Server, references) -> None:
    async def main():
        client = http_aio.InferenceServerClient(server.http_url)
        try:
            assert await client.is_server_ready()
            return await asyncio.gather(
                *(client.infer(MODEL, [images(http_aio, [f])]) for f in FILES)
            )
        finally:
            await client.close()

    for result, ref in zip(asyncio.run(main()), references, strict=True):
        assert_like_api_v1(every_output(result), [ref])
    # The sync client's own async_infer (a greenlet pool).
    client = httpclient.InferenceServerClient(server.http_url, concurrency=2)
    try:
        pending = [
            client.async_infer(MODEL, [images(httpclient, FILES[i : i + 2])]) for i in (0, 2)
        ]
        for i, request in zip((0, 2), pending, strict=True):
            assert_like_api_v1(every_output(request.get_result()), references[i : i + 2])
    finally:
        client.close()


def test_grpc_sync_metadata_a_batch_and_async_infer(server: Server, references) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL, references[0]["model_version"])
        meta = client.get_server_metadata()
        assert meta.name == "chexray" and list(meta.extensions) == ["binary_tensor_data"]
        model = client.get_model_metadata(MODEL, as_json=True)
        assert [o["name"] for o in model["outputs"]] == OUTPUTS
        assert [(i["name"], i["datatype"]) for i in model["inputs"]] == [
            ("image", "BYTES"),
            ("pixels", "UINT8"),
        ]
        result = client.infer(MODEL, [images(grpcclient, FILES)], request_id="g-1")
        assert result.get_response().id == "g-1"
        assert_like_api_v1(every_output(result), references)
        # The callback form, from the client's own thread.
        done, got = threading.Event(), {}

        def callback(result, error) -> None:
            got["result"], got["error"] = result, error
            done.set()

        client.async_infer(
            MODEL,
            [images(grpcclient, FILES[1:3])],
            callback,
            outputs=[grpcclient.InferRequestedOutput("cam_maps")],
        )
        assert done.wait(60), "no answer to async_infer"
        assert got["error"] is None
        assert got["result"].as_numpy("probabilities") is None
        assert_like_api_v1({"cam_maps": got["result"].as_numpy("cam_maps")}, references[1:3])
    finally:
        client.close()


def test_grpc_aio_client(server: Server, references) -> None:
    async def main():
        async with grpc_aio.InferenceServerClient(server.grpc_url) as client:
            assert await client.is_server_ready()
            return await asyncio.gather(
                *(client.infer(MODEL, [images(grpc_aio, [f])]) for f in FILES)
            )

    for result, ref in zip(asyncio.run(main()), references, strict=True):
        assert_like_api_v1(every_output(result), [ref])


def test_pixels_over_http_and_grpc_answer_like_the_file(server: Server) -> None:
    with httpx.Client(base_url=server.base) as h:
        height, width = h.get("/api/v1/models").json()["input_size"]
    pixels = np.stack([grey(21, (height, width)), grey(22, (height, width))])
    # A PNG already at the model's size: decoded to the same pixels, not resized.
    references = [server.reference(png(p)) for p in pixels]
    http = httpclient.InferenceServerClient(server.http_url)
    rpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for module, client in ((httpclient, http), (grpcclient, rpc)):
            t = module.InferInput("pixels", list(pixels.shape), "UINT8")
            t.set_data_from_numpy(pixels)
            assert_like_api_v1(every_output(client.infer(MODEL, [t])), references)
        wrong = grpcclient.InferInput("pixels", [1, height, width + 1], "UINT8")
        wrong.set_data_from_numpy(np.zeros((1, height, width + 1), np.uint8))
        with pytest.raises(InferenceServerException) as info:
            rpc.infer(MODEL, [wrong])
        assert info.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
        assert info.value.message().startswith("invalid_shape: ")
    finally:
        http.close()
        rpc.close()


def test_errors_in_each_protocols_form(server: Server) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    rpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for module, client, status in (
            (httpclient, http, "400"),
            (grpcclient, rpc, str(grpc.StatusCode.INVALID_ARGUMENT)),
        ):
            with pytest.raises(InferenceServerException) as info:
                client.infer(MODEL, [images(module, [FILES[0], b"%PDF-1.7"])])
            assert info.value.status() == status
            assert info.value.message().startswith(
                "unsupported_format: input 'image', element 1: "
            ), info.value.message()
            with pytest.raises(InferenceServerException) as info:
                client.infer(
                    MODEL,
                    [images(module, FILES[:1])],
                    outputs=[module.InferRequestedOutput("heatmap")],
                )
            assert info.value.message().startswith("unknown_output: ")
        with pytest.raises(InferenceServerException) as info:
            http.infer("densenet", [images(httpclient, FILES[:1])])
        assert info.value.status() == "404"
        with pytest.raises(InferenceServerException) as info:
            rpc.infer(MODEL, [images(grpcclient, FILES[:1])], model_version="0")
        assert info.value.status() == str(grpc.StatusCode.NOT_FOUND)
        assert info.value.message().startswith("unknown_model_version: ")
    finally:
        http.close()
        rpc.close()


def test_requests_of_every_protocol_share_one_batch(
    tiny_repo: Path, tmp_path: Path, references
) -> None:
    """A batch of 3 waits for its third image (up to 20 s): one from each protocol."""
    port = free_port()
    env = {"CHEXRAY_GRPC_PORT": str(port), "CHEXRAY_MAX_BATCH": "3", "CHEXRAY_MAX_WAIT_MS": "20000"}
    with running_server(tiny_repo, tmp_path, **env) as (base, _):
        server = Server(base, port)

        def via_grpc():
            with grpcclient.InferenceServerClient(server.grpc_url) as c:
                return c.infer(MODEL, [images(grpcclient, FILES[1:2])])

        def via_http():
            c = httpclient.InferenceServerClient(server.http_url)
            try:
                return c.infer(MODEL, [images(httpclient, FILES[2:3])])
            finally:
                c.close()

        with ThreadPoolExecutor(3) as pool:
            rest = pool.submit(server.reference, FILES[0])
            rpc, http = pool.submit(via_grpc), pool.submit(via_http)
            answers = rest.result(60), rpc.result(60), http.result(60)
    assert answers[0]["timings"]["batch_size"] == 3
    # Each got its own image's answer (as another server gave it for that file alone).
    for result, ref in ((answers[1], references[1]), (answers[2], references[2])):
        assert_like_api_v1(every_output(result), [ref])


def test_admission_is_shared_by_every_protocol(tiny_repo: Path, tmp_path: Path) -> None:
    """A budget of 0 s: while one /api/v1 analysis is in progress, both OIP front ends are
    refused, each in its own form; once it is done they are served again."""
    port = free_port()
    env = {"CHEXRAY_GRPC_PORT": str(port), "CHEXRAY_MAX_QUEUE_WAIT_MS": "0"}
    with running_server(tiny_repo, tmp_path, **env) as (base, _):
        server = Server(base, port)
        http = httpclient.InferenceServerClient(server.http_url)
        rpc = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            slow = start_upload(base, FILES[0])
            wait_in_flight(base, 1)
            with pytest.raises(InferenceServerException) as info:
                http.infer(MODEL, [images(httpclient, FILES[:1])])
            assert info.value.status() == "503"
            assert info.value.message().startswith("overloaded: ")
            with pytest.raises(InferenceServerException) as info:
                rpc.infer(MODEL, [images(grpcclient, FILES[:1])])
            assert info.value.status() == str(grpc.StatusCode.UNAVAILABLE)
            assert info.value.message().startswith("overloaded: ")
            assert finish_upload(slow, FILES[0])[0] == 200
            wait_in_flight(base, 0)
            answer = rpc.infer(MODEL, [images(grpcclient, FILES[:1])])
            assert answer.as_numpy("present").shape == (1, 5)
            assert http.infer(MODEL, [images(httpclient, FILES[:1])]).as_numpy("present").shape == (
                1,
                5,
            )
        finally:
            http.close()
            rpc.close()


def test_a_taken_grpc_port_stops_the_server_in_one_line(tiny_repo: Path, tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CHEXRAY_")},
            "CHEXRAY_MODEL_DIR": str(tiny_repo),
            "CHEXRAY_DATA_DIR": str(tmp_path / "data"),
            "CHEXRAY_PORT": str(free_port()),
            "CHEXRAY_GRPC_PORT": str(taken.getsockname()[1]),
        }
        result = subprocess.run(
            [sys.executable, "-m", "chexray.cli", "serve", "--no-build"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert "cannot listen for gRPC on 127.0.0.1:" in result.stdout
    assert "CHEXRAY_GRPC_PORT" in result.stdout and "Traceback" not in result.stderr


def test_grpc_port_0_serves_rest_alone(tiny_repo: Path, tmp_path: Path) -> None:
    with running_server(tiny_repo, tmp_path, CHEXRAY_GRPC_PORT="0") as (base, proc):
        client = httpclient.InferenceServerClient(urlsplit(base).netloc)
        try:
            result = client.infer(MODEL, [images(httpclient, FILES[:1])])
            assert result.as_numpy("probabilities").shape == (1, 5)
        finally:
            client.close()
        assert proc.poll() is None


class BearerAuth:
    """A tritonclient plugin: every request of the client carries the credential."""

    def __init__(self, credential: str) -> None:
        self.credential = credential

    def __call__(self, request) -> None:
        request.headers["authorization"] = f"Bearer {self.credential}"


def test_api_keys_over_both_protocols_with_auth_required(strict_server: Server) -> None:
    """tritonclient sends an API key (or a session token) as a header (HTTP) or the
    `authorization` metadata (gRPC); without one, inference is refused (401,
    UNAUTHENTICATED) while health and metadata stay open; a revoked key stops at once."""
    with httpx.Client(base_url=strict_server.base, timeout=30) as h:
        body = {"username": "service", "email": "service@example.org"}
        r = h.post(
            "/api/v1/auth/register", json={**body, "password": PASSWORD, "password2": PASSWORD}
        )
        assert r.status_code == 201, r.text
        r = h.post("/api/v1/auth/login", json={"username": "service", "password": PASSWORD})
        token = {"Authorization": f"Bearer {r.json()['token']}"}
        created = h.post("/api/v1/me/keys", headers=token, json={"name": "triton"}).json()
        key = created["key"]
        reference = post_image(h, FILES[0], headers={"X-API-Key": key}, heatmap="none").json()

        grpc_client = grpcclient.InferenceServerClient(strict_server.grpc_url)
        http_client = httpclient.InferenceServerClient(strict_server.http_url)
        try:
            assert grpc_client.is_server_ready() and http_client.is_server_ready()
            assert grpc_client.get_model_metadata(MODEL, as_json=True)["name"] == MODEL
            assert http_client.get_model_metadata(MODEL)["name"] == MODEL
            with pytest.raises(InferenceServerException) as info:
                grpc_client.infer(MODEL, [images(grpcclient, FILES[:1])])
            assert info.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
            assert info.value.message().startswith("not_authenticated: ")
            with pytest.raises(InferenceServerException) as info:
                http_client.infer(MODEL, [images(httpclient, FILES[:1])])
            assert info.value.status() == "401"
            assert info.value.message().startswith("not_authenticated: ")

            # A function: tritonclient's HTTP client adds its own headers to the dict given.
            def auth() -> dict[str, str]:
                return {"authorization": f"Bearer {key}"}

            result = grpc_client.infer(MODEL, [images(grpcclient, FILES[:1])], headers=auth())
            assert_like_api_v1(every_output(result), [reference])
            result = http_client.infer(MODEL, [images(httpclient, FILES[:1])], headers=auth())
            assert_like_api_v1(every_output(result), [reference])
            # X-API-Key, and a session token, do as well.
            result = grpc_client.infer(
                MODEL, [images(grpcclient, FILES[:1])], headers={"x-api-key": key}
            )
            assert result.as_numpy("probabilities").shape == (1, 5)
            http_client.register_plugin(BearerAuth(token["Authorization"].split()[1]))
            assert http_client.infer(MODEL, [images(httpclient, FILES[:1])]).as_numpy(
                "present"
            ).shape == (1, 5)
            http_client.unregister_plugin()

            assert h.delete(f"/api/v1/me/keys/{created['id']}", headers=token).status_code == 204
            with pytest.raises(InferenceServerException) as info:
                grpc_client.infer(MODEL, [images(grpcclient, FILES[:1])], headers=auth())
            assert info.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
            assert info.value.message().startswith("invalid_api_key: ")
            with pytest.raises(InferenceServerException) as info:
                http_client.infer(MODEL, [images(httpclient, FILES[:1])], headers=auth())
            assert info.value.status() == "401"
        finally:
            grpc_client.close()
            http_client.close()
