"""Backends and precisions on the tiny repository: the choice, OpenVINO fp32/bf16 against
onnxruntime fp32, the precision record in the manifest, and refusals."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest

from server.runtime.backends import Choice, ChoiceError, Machine, choose, expects_gpu
from server.runtime.engine import Engine
from server.runtime.manifest import RepositoryError, load_manifest
from server.runtime.precision import PrecisionRefused, compare, record
from server.runtime.repository import verify_repository
from server.settings import Settings
from tests.support.api import client, xray
from tests.support.server_process import ROOT

CPU_BF16 = Machine(cuda=False, openvino=True, bf16=True)
CPU_ONLY = Machine(cuda=False, openvino=True, bf16=False)
NO_OPENVINO = Machine(cuda=False, openvino=False, bf16=False)
GPU = Machine(cuda=True, openvino=True, bf16=True)


def pick(repo: Path, machine: Machine, **settings) -> Choice:
    return choose(Settings(**settings), load_manifest(repo), machine)


def test_auto_picks_cuda_fp16_then_openvino_bf16_then_fp32(tiny_repo: Path) -> None:
    assert pick(tiny_repo, GPU) == Choice("onnxruntime", "cuda", "fp16")
    assert pick(tiny_repo, CPU_BF16) == Choice("openvino", "cpu", "bf16")
    assert pick(tiny_repo, CPU_ONLY) == Choice("openvino", "cpu", "fp32")
    assert pick(tiny_repo, NO_OPENVINO) == Choice("onnxruntime", "cpu", "fp32")
    assert pick(tiny_repo, GPU, precision="fp32") == Choice("onnxruntime", "cuda", "fp32")
    assert pick(tiny_repo, CPU_BF16, backend="onnxruntime") == Choice("onnxruntime", "cpu", "fp32")
    assert pick(tiny_repo, GPU, precision="bf16") == Choice("openvino", "cpu", "bf16")


@pytest.mark.parametrize("machine", [GPU, CPU_BF16, CPU_ONLY, NO_OPENVINO])
@pytest.mark.parametrize("backend", ["auto", "onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "fp16", "int8"])
def test_expects_gpu_tells_ahead_where_choose_puts_the_engine(
    tiny_repo: Path, machine: Machine, backend: str, precision: str
) -> None:
    # The side pools are sized before a repository is read: on a GPU machine the renderer's
    # threads must be the engine's, whatever the settings ask for. The manifest claims an
    # int8 graph too, so that every precision has one to choose.
    manifest = load_manifest(tiny_repo)
    manifest = msgspec.structs.replace(manifest, fused_int8=manifest.fused)
    settings = Settings(backend=backend, precision=precision)
    try:
        chosen = choose(settings, manifest, machine)
    except (ChoiceError, RepositoryError):
        return  # no engine to agree with
    assert expects_gpu(settings, machine) == (chosen.device == "cuda")


@pytest.mark.parametrize(
    ("machine", "settings", "message"),
    [
        (CPU_ONLY, {"precision": "bf16"}, "no native bf16"),
        (CPU_BF16, {"precision": "fp16"}, "fp16 is for CUDA"),
        (CPU_BF16, {"backend": "onnxruntime", "precision": "bf16"}, "bf16 is served by OpenVINO"),
        (CPU_BF16, {"backend": "openvino", "precision": "fp16"}, "OpenVINO serves fp32, bf16"),
        (CPU_BF16, {"backend": "openvino", "precision": "int8"}, "no int8 graph"),
        (NO_OPENVINO, {"backend": "openvino"}, "openvino package is not installed"),
        (CPU_BF16, {"provider": "cuda"}, "no CUDA provider"),
        (CPU_BF16, {"precision": "int8"}, "no int8 graph"),
    ],
)
def test_impossible_choices_say_why(tiny_repo: Path, machine, settings, message) -> None:
    with pytest.raises((ChoiceError, RepositoryError), match=message):
        pick(tiny_repo, machine, **settings)


def predict(repo: Path, data: Path, uploads: list[bytes], **settings):
    async def main():
        engine = Engine(
            Settings(model_dir=repo, data_dir=data, warmup_batch_sizes=(1,), **settings)
        )
        await engine.start()
        try:
            return engine, [await engine.predict(u) for u in uploads]
        finally:
            await engine.stop()

    return asyncio.run(main())


@pytest.mark.skipif(not Machine.here().openvino, reason="openvino is not installed")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_answers_like_onnxruntime_fp32(tiny_copy: Path, tmp_path: Path, precision):
    if precision == "bf16" and not Machine.here().bf16:
        pytest.skip("this CPU has no native bf16")
    uploads = [xray(seed) for seed in range(3)]
    _, expected = predict(tiny_copy, tmp_path, uploads, backend="onnxruntime")
    engine, got = predict(tiny_copy, tmp_path, uploads, backend="openvino", precision=precision)
    assert engine.choice == Choice("openvino", "cpu", precision)
    assert engine.provider == "OpenVINO CPU"
    # No record in the manifest: the engine ran the check itself, and it passed.
    assert engine.precision_check is not None and engine.precision_check.passed
    for e, g in zip(expected, got, strict=True):
        assert g.backend == f"openvino-cpu-{precision}" and g.precision == precision
        np.testing.assert_allclose(g.probabilities, e.probabilities, atol=1e-2)
        np.testing.assert_allclose(g.cam_maps, e.cam_maps, atol=0.05 * np.abs(e.cam_maps).max())


def test_check_precision_records_every_choice_in_the_manifest(tiny_copy: Path) -> None:
    before = verify_repository(tiny_copy)
    assert before.precision_checks == {}
    result = subprocess.run(
        [sys.executable, "-m", "chexray.cli", "models", "check-precision", "--dir", str(tiny_copy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    after = verify_repository(tiny_copy)
    machine = Machine.here()
    expected = {"openvino-cpu-fp32"} if machine.openvino else set()
    if machine.bf16:
        expected.add("openvino-cpu-bf16")
    assert set(after.precision_checks) == expected, result.stdout + result.stderr
    assert result.returncode == 0 and after.version == before.version
    for label, check in after.precision_checks.items():
        assert check.passed and check.images == 16 and label in result.stdout
        assert len(check.max_abs_diff) == 5 and max(check.max_abs_diff) <= check.tolerance


def failed_record(repo: Path, label: str) -> None:
    manifest = load_manifest(repo)
    ref = np.full((2, 5), 0.2)
    bad = compare(label, ref, ref + 0.3, manifest.thresholds.values, "test", 0.1)
    assert not bad.passed
    record(repo, manifest, [bad])


def test_a_precision_that_failed_its_check_is_refused(tiny_copy: Path, tmp_path: Path) -> None:
    failed_record(tiny_copy, "openvino-cpu-fp32")
    settings = Settings(
        model_dir=tiny_copy, data_dir=tmp_path, backend="openvino", precision="fp32"
    )
    if not Machine.here().openvino:
        pytest.skip("openvino is not installed")
    with pytest.raises(PrecisionRefused, match="failed its precision check"):
        Engine(settings)
    env = {"CHEXRAY_MODEL_DIR": str(tiny_copy), "CHEXRAY_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "chexray.cli", "serve", "--no-build"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**_base_env(), **env, "CHEXRAY_BACKEND": "openvino", "CHEXRAY_PRECISION": "fp32"},
        timeout=120,
    )
    assert result.returncode == 2
    assert "failed its precision check" in result.stdout and "CHEXRAY_PRECISION=fp32" in (
        result.stdout
    )


def _base_env() -> dict[str, str]:
    import os

    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHEXRAY_") or k.startswith("CHEXRAY_TEST_")
    }


@pytest.mark.skipif(not Machine.here().openvino, reason="openvino is not installed")
def test_the_api_says_which_backend_and_precision_answered(tiny_copy: Path, tmp_path: Path):
    with client(tiny_copy, tmp_path, backend="openvino", precision="fp32") as c:
        r = c.post("/api/v1/predictions", files={"image": ("x.png", xray(), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["backend"], body["precision"]) == ("openvino-cpu-fp32", "fp32")
        models = c.get("/api/v1/models").json()
        assert (models["backend"], models["precision"]) == ("openvino", "fp32")
        assert models["provider"] == "OpenVINO CPU" and models["served_file"] == "ensemble.onnx"
        check = models["precision_check"]
        assert check["passed"] and set(check["max_abs_diff"]) == {
            "Atelectasis",
            "Cardiomegaly",
            "Consolidation",
            "Edema",
            "Pleural Effusion",
        }
        metrics = c.get("/metrics").text
        assert 'backend="openvino"' in metrics and 'precision="fp32"' in metrics


def test_older_databases_gain_the_new_nullable_columns(tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    from server.store.db import Database

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    db.create_all()
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE studies DROP COLUMN backend"))
        conn.execute(text("ALTER TABLE studies DROP COLUMN precision"))
    assert "backend" not in {c["name"] for c in inspect(db.engine).get_columns("studies")}
    db.create_all()
    columns = {c["name"] for c in inspect(db.engine).get_columns("studies")}
    assert {"backend", "precision"} <= columns
    db.dispose()


def test_manifest_without_records_still_loads(tiny_copy: Path) -> None:
    """Manifests written before precision checks existed have neither field."""
    raw = msgspec.json.decode((tiny_copy / "manifest.json").read_bytes())
    raw.pop("precision_checks", None)
    raw.pop("fused_int8", None)
    (tiny_copy / "manifest.json").write_bytes(msgspec.json.encode(raw))
    m = load_manifest(tiny_copy)
    assert m.precision_checks == {} and m.fused_int8 is None
