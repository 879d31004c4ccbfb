"""The service below the Open Inference Protocol (server/service/inference.py) on the tiny
repository: named tensors in, the engine's outputs by name out, the same answers as the
engine gives each image alone, and every bad request refused with its stable code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from server.errors import ChexrayError, InvalidInput, NotFound, TooLarge
from server.runtime import contract
from server.runtime.admission import Overloaded
from server.runtime.engine import Engine
from server.runtime.state import EngineState
from server.service.inference import Inference, InferRequest, Tensor
from server.settings import Settings
from tests.support.images import anatomy, dicom, jpeg, png

OUTPUTS = [*contract.OUTPUTS, "present"]


def grey(seed: int, size: tuple[int, int]) -> np.ndarray:
    return np.rint(anatomy(*size, seed=seed) * 255).astype(np.uint8)


def files() -> list[bytes]:
    return [
        png(grey(1, (240, 200))),
        jpeg(grey(2, (300, 260))),
        dicom(np.rint(anatomy(256, 256, seed=3) * 4095).astype(np.uint16)),
    ]


def images(*elements: bytes) -> Tensor:
    data = np.empty(len(elements), dtype=object)
    data[:] = list(elements)
    return Tensor("image", "BYTES", data)


def request(*inputs: Tensor, outputs: tuple[str, ...] = (), **kw) -> InferRequest:
    return InferRequest(kw.pop("model_name", "chexray"), inputs, outputs=outputs, **kw)


class Rig:
    """An engine in its state object and the Inference service over it, on one loop."""

    def __init__(self, repo: Path, **settings) -> None:
        self.settings = Settings(
            model_dir=repo,
            data_dir=repo.parent / "oip-engine-data",
            warmup_batch_sizes=(1,),
            backend="onnxruntime",
            **settings,
        )
        self.state = EngineState()
        self.inference = Inference(self.state, self._readiness, self.settings.max_queue)

    async def _readiness(self):
        return self.state.checks(), self.state.reason

    async def __aenter__(self) -> Rig:
        await self.state.boot(lambda: Engine(self.settings))
        assert self.state.status == "ready", self.state.error
        return self

    async def __aexit__(self, *exc) -> None:
        await self.state.stop()

    @property
    def engine(self) -> Engine:
        assert self.state.engine is not None
        return self.state.engine


def run(repo: Path, body, **settings):
    async def main():
        async with Rig(repo, **settings) as rig:
            return await body(rig)

    return asyncio.run(main())


def test_a_batch_of_files_answers_as_each_file_alone(tiny_repo: Path) -> None:
    uploads = files()

    async def body(rig: Rig):
        answer = await rig.inference.infer(request(images(*uploads)))
        alone = [await rig.engine.predict(u) for u in uploads]
        return answer, alone, rig.engine.manifest

    answer, alone, manifest = run(tiny_repo, body, max_batch=4)
    assert [t.name for t in answer.outputs] == OUTPUTS
    assert answer.model_name == "chexray" and answer.model_version == manifest.version
    out = {t.name: t for t in answer.outputs}
    assert {t.datatype for t in answer.outputs} == {"FP32", "BOOL"}
    assert out["present"].datatype == "BOOL"
    members = [m.name for m in manifest.members]
    for i, p in enumerate(alone):
        tol = contract.FUSED_TOLERANCE  # batched with others vs alone
        np.testing.assert_allclose(out["probabilities"].data[i], p.probabilities, atol=tol)
        np.testing.assert_allclose(out["cam_probabilities"].data[i], p.cam_probabilities, atol=tol)
        np.testing.assert_allclose(
            out["member_probabilities"].data[i],
            np.stack([p.member_probabilities[m] for m in members]),
            atol=tol,
        )
        scale = max(1.0, float(np.abs(p.cam_maps).max()))
        np.testing.assert_allclose(out["cam_maps"].data[i], p.cam_maps, atol=tol * scale)
        assert out["present"].data[i].tolist() == p.calls.tolist()
    thresholds = np.asarray(manifest.thresholds.values, np.float32)
    assert (out["present"].data == (out["probabilities"].data >= thresholds)).all()
    assert out["cam_maps"].shape == (3, 5, *manifest.cam.feature_map[1:])


def test_pixels_at_model_resolution_answer_like_the_same_image_as_a_file(tiny_repo: Path):
    async def body(rig: Rig):
        h, w = rig.engine.input_size
        pixels = np.stack([grey(4, (h, w)), grey(5, (h, w))])
        by_pixels = await rig.inference.infer(
            request(Tensor("pixels", "UINT8", pixels), outputs=("present", "probabilities"))
        )
        # A PNG already at the model's size is decoded to the same pixels and not resized.
        by_file = await rig.inference.infer(
            request(images(png(pixels[0]), png(pixels[1])), outputs=("probabilities",))
        )
        return by_pixels, by_file

    by_pixels, by_file = run(tiny_repo, body)
    assert [t.name for t in by_pixels.outputs] == ["present", "probabilities"]
    np.testing.assert_allclose(
        by_pixels.outputs[1].data, by_file.outputs[0].data, atol=contract.FUSED_TOLERANCE
    )


def test_metadata_readiness_and_unknown_models(tiny_repo: Path) -> None:
    async def body(rig: Rig):
        inf = rig.inference
        meta = inf.model_metadata("chexray")
        version = meta.versions[0]
        assert inf.check_model("chexray", version) == version
        assert await inf.ready() and await inf.model_ready("chexray", version)
        errors = []
        for name, ver in (("densenet", ""), ("chexray", "v0")):
            with pytest.raises(NotFound) as info:
                inf.model_metadata(name, ver)
            errors.append(info.value.code)
            with pytest.raises(NotFound):
                await inf.model_ready(name, ver)
            with pytest.raises(NotFound):
                await inf.infer(request(images(files()[0]), model_name=name, model_version=ver))
        rig.state.drain()  # shutting down: not ready, as /health/ready
        assert not await inf.ready()
        return meta, rig.engine, errors

    meta, engine, errors = run(tiny_repo, body)
    assert errors == ["unknown_model", "unknown_model_version"]
    h, w = engine.input_size
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
        ("image", "BYTES", (-1,)),
        ("pixels", "UINT8", (-1, h, w)),
    ]
    fh, fw = engine.manifest.cam.feature_map[1:]
    assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [
        ("probabilities", "FP32", (-1, 5)),
        ("member_probabilities", "FP32", (-1, len(engine.manifest.members), 5)),
        ("cam_probabilities", "FP32", (-1, 5)),
        ("cam_maps", "FP32", (-1, 5, fh, fw)),
        ("present", "BOOL", (-1, 5)),
    ]
    assert meta.platform == "onnxruntime_onnx"


def bad_requests(h: int, w: int) -> list[tuple[InferRequest, type, str]]:
    good = images(files()[0])
    pixels = np.zeros((1, h, w), np.uint8)
    floats, wide = pixels.astype(np.float32), np.zeros((1, h, w + 1), np.uint8)
    return [
        (request(), InvalidInput, "invalid_inputs"),
        (request(good, good), InvalidInput, "invalid_inputs"),
        (request(Tensor("scan", "BYTES", good.data)), InvalidInput, "unknown_input"),
        (request(Tensor("image", "UINT8", pixels)), InvalidInput, "invalid_datatype"),
        (request(Tensor("pixels", "FP32", floats)), InvalidInput, "invalid_datatype"),
        (request(Tensor("image", "BYTES", good.data.reshape(1, 1))), InvalidInput, "invalid_shape"),
        (request(Tensor("pixels", "UINT8", wide)), InvalidInput, "invalid_shape"),
        (request(images()), InvalidInput, "empty_input"),
        (request(good, outputs=("probabilities", "heatmap")), InvalidInput, "unknown_output"),
        (request(images(*[files()[0]] * 5)), TooLarge, "too_many_images"),
    ]  # fmt: skip


def test_bad_requests_are_refused_with_their_codes(tiny_repo: Path) -> None:
    async def body(rig: Rig):
        h, w = rig.engine.input_size
        refused = []
        for req, kind, code in bad_requests(h, w):
            with pytest.raises(kind) as info:
                await rig.inference.infer(req)
            refused.append((code, info.value.code, info.value.message))
        assert rig.engine.admission.in_flight == 0
        return refused

    for expected, code, message in run(tiny_repo, body, max_queue=4):
        assert code == expected, message


def test_a_bad_file_among_good_ones_is_named_and_the_places_come_back(tiny_repo: Path):
    good = files()[0]

    async def body(rig: Rig):
        with pytest.raises(ChexrayError) as info:
            await rig.inference.infer(request(images(good, b"%PDF-1.7 not an x-ray", good)))
        assert rig.engine.admission.in_flight == 0
        return info.value

    error = run(tiny_repo, body)
    assert error.code == "unsupported_format"
    assert error.message.startswith("input 'image', element 1: ")
    assert error.detail == {"input": "image", "index": 1}


def test_a_request_counts_as_its_images_for_admission(tiny_repo: Path) -> None:
    async def body(rig: Rig):
        admission = rig.engine.admission
        seen = []
        original = rig.engine.predict

        async def predict(data: bytes, force: bool = False):
            seen.append(admission.in_flight)
            return await original(data, force)

        rig.engine.predict = predict  # type: ignore[method-assign]
        with admission.admit(2):  # two analyses of other callers in progress
            await rig.inference.infer(request(images(*files()[:2])))
            with pytest.raises(Overloaded) as info:
                await rig.inference.infer(request(images(*files())))
            assert admission.in_flight == 2
            # One place already held by the caller (a REST body being read) counts too.
            with rig.inference.admit():
                await rig.inference.infer(request(images(*files()[:2])), admitted=1)
        return seen, info.value

    seen, refused = run(tiny_repo, body, max_queue=4)
    assert seen == [4, 4, 4, 4], "each image of a request holds a place while it runs"
    assert refused.code == "overloaded" and "this request adds 3" in refused.message
