"""The GPU benchmark's CPU path (`bench/gpu.py --device cpu --quick`): every phase runs on
the tiny repository with the CPU provider (precision check, engine limit with IO binding
for fp32 and fp16 at 1 and 2 instances, a real server under Locust, the report), and the
report's files and structure come out right. The CUDA path needs a GPU: not tested here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

# Looked up, never imported here: locust monkey-patches the whole process with gevent.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason="the benchmark's load generator (locust) is missing",
)


def test_cpu_path_writes_a_complete_report(tiny_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu.py"),
            "--device",
            "cpu",
            "--quick",
            "--repo",
            str(tiny_copy),
            "--out",
            str(out),
            "--images-dir",
            str(tmp_path / "images"),
            "--users",
            "1,4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(out.iterdir())
    assert [p.suffix for p in files] == [".json", ".md", ".png"]
    assert len({p.stem for p in files}) == 1 and files[0].stem.startswith("cpu-path-")
    report = json.loads(files[0].read_text())

    rows = report["engine"]["rows"]
    assert {(r["config"], r["instances"]) for r in rows} == {
        (f"onnxruntime-cpu-{p}", i) for p in ("fp32", "fp16") for i in (1, 2)
    }
    assert {r["batch"] for r in rows} == {1, 2, 4}
    assert all("error" not in r and r["images_per_s"] > 0 and r["runs"] >= 2 for r in rows)

    server = report["server"]
    assert server["backend"] == report["served"] == "onnxruntime-cpu-fp32"
    assert [x["users"] for x in server["levels"]] == [1, 4]
    assert all(x["requests"] > 0 and x["failures"] == 0 for x in server["levels"])
    # The same images at the model's input size, at the most clients: almost no decoding.
    model_size = server["model_size"]
    assert model_size["users"] == 4 and model_size["label"] == "4, model-size uploads"
    assert model_size["requests"] > 0 and model_size["failures"] == 0
    assert model_size["cpu"]["decoding_ms"] < server["levels"][-1]["cpu"]["decoding_ms"] / 4
    assert server["settings"]["CHEXRAY_PROVIDER"] == "cpu"
    # The server's CPU by thread: the decode pool is found by the name its threads carry.
    for level in server["levels"]:
        cpu = level["cpu"]
        assert cpu["event_loop_ms"] > 0 and cpu["decoding_ms"] > 0 and cpu["rest_ms"] > 0
        assert 0 < cpu["event_loop_busy"] <= 1.05 and cpu["cores_busy"] > cpu["event_loop_busy"]
    assert server["device_memory"] == {
        "measured": False,
        "reader": None,
        "baseline_mb": None,
        "peak_mb": None,
        "segments_mb": {},
    }
    assert report["precision_check"]["status"].startswith("not needed")

    ratios = report["ratios"]
    assert set(ratios) == {
        "server_saturation_over_engine_limit",
        "server_p50_1_client_over_engine_batch_1",
        "peak_device_memory_over_limit",
        "model_size_saturation_over_engine_limit",
    }
    assert ratios["model_size_saturation_over_engine_limit"]["value"] > 0
    assert ratios["model_size_saturation_over_engine_limit"]["met"] is None
    assert ratios["server_saturation_over_engine_limit"]["value"] > 0
    assert ratios["server_p50_1_client_over_engine_batch_1"]["value"] > 0
    assert ratios["peak_device_memory_over_limit"]["value"] is None
    assert {"precision check", "engine", "server", "report"} <= set(report["phases"])

    text = files[1].read_text()
    for heading in ("## Phases", "## Engine limit", "## Server under load", "## Ratios"):
        assert heading in text
    assert "not measured" in text and "| event loop ms |" in text
    assert "| 4, model-size uploads |" in text and "already at the model's input size" in text
    assert files[2].read_bytes().startswith(b"\x89PNG")
