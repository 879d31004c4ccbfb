"""The engine end to end on the tiny repository: bytes in, findings and heatmaps out."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest
from prometheus_client import generate_latest

from server.api.errors import status_of
from server.cam.renderer import Renderer
from server.runtime.decode import DecodeError
from server.runtime.engine import Engine
from server.runtime.manifest import FINDINGS
from server.settings import Settings
from tests.support.images import anatomy, dicom, png


@pytest.fixture(scope="module")
def results(tiny_repo: Path):
    """One engine run: a PNG, a DICOM, a bad upload, heatmaps; checked by the tests below."""
    upload = png(np.rint(anatomy(300, 260) * 255).astype(np.uint8))

    async def main():
        engine = Engine(
            Settings(
                model_dir=tiny_repo,
                data_dir=tiny_repo.parent / "engine-data",
                max_batch=4,
                warmup_batch_sizes=(1, 4),
                backend="onnxruntime",
            )
        )
        renderer = Renderer(engine.settings.heatmap_alpha, 1)
        await engine.start()
        assert engine.ready
        try:
            p = await engine.predict(upload)
            d = await engine.predict(dicom(np.rint(anatomy() * 4095).astype(np.uint16)))
            maps = (p.image.pixels, p.cam_maps, p.probabilities, p.calls)
            combined = await renderer.heatmap(*maps)
            single = await renderer.heatmap(*maps, "Edema")
            with pytest.raises(DecodeError) as bad:
                await engine.predict(b"not an image at all")
            with pytest.raises(ValueError, match="unknown finding 'Fracture'"):
                await renderer.heatmap(*maps, "Fracture")
        finally:
            await engine.stop()
            renderer.close()
        assert not engine.ready
        return engine, p, d, combined, single, bad.value

    return asyncio.run(main())


def test_prediction_fields(results) -> None:
    engine, p, _, _, _, _ = results
    m = engine.manifest
    assert p.findings == FINDINGS and p.probabilities.shape == (5,)
    assert p.thresholds == tuple(m.thresholds.values)
    np.testing.assert_array_equal(p.calls, p.probabilities >= np.asarray(p.thresholds, np.float32))
    assert p.model_version == m.version and p.trained is False
    assert list(p.member_probabilities) == [x.name for x in m.members]
    weights = np.asarray(m.weights_normalised)
    members = np.stack(list(p.member_probabilities.values()))
    np.testing.assert_allclose(p.probabilities, (members * weights).sum(0), atol=1e-6)
    assert p.cam_maps.shape == (5, *m.cam.feature_map[1:])
    t = p.timings
    assert t.batch_size == 1 and t.compute_ms > 0 and t.decode_ms > 0 and t.queue_ms >= 0
    assert (p.image.width, p.image.height, p.image.format) == (260, 300, "png")


def test_input_hashed_beside_decoding_only_for_the_audit_log(results, tiny_repo: Path) -> None:
    engine, p, d, _, _, _ = results
    upload = png(np.rint(anatomy(300, 260) * 255).astype(np.uint8))
    assert p.image.sha256 == hashlib.sha256(upload).hexdigest()
    assert d.image.sha256 is not None and d.image.sha256 != p.image.sha256
    unaudited = Engine(
        msgspec.structs.replace(engine.settings, audit_log=False), manifest=engine.manifest
    )
    _, image, *_ = unaudited._timed_prepare(upload, True)
    assert image.sha256 is None and image.pixels.shape == (300, 260)


def test_dicom_prediction_keeps_only_technical_tags(results) -> None:
    _, _, d, _, _, _ = results
    assert d.image.format == "dicom" and "PatientName" not in d.image.dicom


def test_heatmaps_have_the_image_size(results) -> None:
    _, p, _, combined, single, _ = results
    for data in (combined, single):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (300, 260, 3)
    assert combined != single or p.calls.sum() == 0


def test_bad_upload_is_a_typed_error_and_counted(results) -> None:
    engine, _, _, _, _, bad = results
    assert (bad.code, status_of(bad)) == ("unsupported_format", 415)
    text = generate_latest(engine.metrics.registry).decode()
    v = f'model="ensemble",version="{engine.version}"'
    assert f'chexray_engine_errors_total{{kind="unsupported_format",{v}}} 1.0' in text
    assert f"chexray_engine_requests_total{{{v}}} 3.0" in text
    assert f"chexray_engine_batch_size_count{{{v}}} 2.0" in text
    assert "chexray_engine_queue_wait_seconds_bucket" in text
    assert 'provider="CPUExecutionProvider"' in text


def test_provider_in_use_is_logged(tiny_repo: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="chexray.runtime"):
        Engine(
            Settings(model_dir=tiny_repo, data_dir=tiny_repo.parent / "engine-data", provider="cpu")
        )
    assert "ensemble.onnx (float32) on CPUExecutionProvider" in caplog.text


def test_cuda_without_a_gpu_says_what_to_install(tiny_repo: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(RuntimeError, match="install the gpu extra"):
        Engine(
            Settings(
                model_dir=tiny_repo, data_dir=tiny_repo.parent / "engine-data", provider="cuda"
            )
        )


def test_cpu_optimized_graph_is_cached_and_equivalent(tiny_repo: Path, tmp_path: Path) -> None:
    from convert.reference import random_images

    cached = Engine(Settings(model_dir=tiny_repo, data_dir=tmp_path))
    (marker,) = (tmp_path / "ort-cache").glob("*/complete")
    assert (marker.parent / "model.data").stat().st_size > 0
    direct = Engine(Settings(model_dir=tiny_repo, data_dir=tmp_path, optimized_cache=False))
    images = random_images(3, *cached.input_size, seed=5)
    a, b = cached._run_batch(0, images), direct._run_batch(0, images)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5)
    again = Engine(Settings(model_dir=tiny_repo, data_dir=tmp_path))  # reuses the cache
    assert len(list((tmp_path / "ort-cache").iterdir())) == 1
    np.testing.assert_allclose(again._run_batch(0, images)["probabilities"], a["probabilities"])


def test_a_manifest_with_another_graph_contract_is_refused(tiny_copy: Path) -> None:
    import msgspec

    from server.runtime.manifest import RepositoryError, load_manifest

    manifest = load_manifest(tiny_copy)
    renamed = [msgspec.structs.replace(o, name=o.name + "_v2") for o in manifest.outputs]
    with pytest.raises(RepositoryError, match="contract is not one this server knows"):
        Engine(
            Settings(model_dir=tiny_copy, data_dir=tiny_copy.parent / "d", backend="onnxruntime"),
            manifest=msgspec.structs.replace(manifest, outputs=renamed),
        )
