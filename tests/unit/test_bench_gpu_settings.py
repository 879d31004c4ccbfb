"""The GPU benchmark's choice of server settings from the engine's figures: instances,
max batch, and device memory split as the server splits it, with the engine's sessions
measured under a smaller arena than the server's so the chosen batch keeps a margin."""

from __future__ import annotations

from bench.gpu import ENGINE_ARENA_SHARE, GIB, engine_arena, served_label, server_settings


def _rows(label: str, instances: int, per_batch: dict[int, float]) -> list[dict]:
    return [
        {"config": label, "instances": instances, "batch": b, "images_per_s": v}
        for b, v in per_batch.items()
    ]


def test_the_server_gets_the_whole_arena_budget_and_splits_it_itself() -> None:
    label = served_label("cuda")
    rows = _rows(label, 1, {1: 24, 8: 230, 16: 460, 32: 695}) + _rows(
        label, 2, {1: 46, 8: 373, 16: 712, 32: 1022}
    )
    rows.append({"config": label, "instances": 2, "batch": 64, "error": "out of memory"})
    env, why = server_settings(rows, label, "cuda", 6 * GIB, GIB, 64, 16)
    assert env["CHEXRAY_INSTANCES"] == "2"  # 1022 >= 1.1 x 695
    assert env["CHEXRAY_MAX_BATCH"] == "32"  # the smallest within 95 % of the best
    assert env["CHEXRAY_PRECISION"] == "fp16"
    # the server divides CHEXRAY_GPU_MEM_LIMIT between its instances: 2.5 GiB each
    assert int(env["CHEXRAY_GPU_MEM_LIMIT"]) == 5 * GIB
    assert any("2.50 GiB per session" in w for w in why)
    # ...while each engine session was measured under 90 % of that
    assert engine_arena(5 * GIB, 2) == int(ENGINE_ARENA_SHARE * 5 * GIB) // 2 < 2.5 * GIB


def test_fp32_can_be_served_and_one_instance_wins_without_a_clear_gain() -> None:
    label = served_label("cuda", "fp32")
    assert label == "onnxruntime-cuda-fp32"
    rows = _rows(label, 1, {1: 31, 8: 190, 16: 415}) + _rows(label, 2, {1: 49, 8: 424})
    env, _ = server_settings(rows, label, "cuda", 6 * GIB, GIB, 64, 16)
    assert env["CHEXRAY_INSTANCES"] == "1"  # 424 < 1.1 x 415
    assert env["CHEXRAY_MAX_BATCH"] == "16" and env["CHEXRAY_PRECISION"] == "fp32"
    assert served_label("cpu", "fp16") == "onnxruntime-cpu-fp32"  # no fp16 on a CPU
