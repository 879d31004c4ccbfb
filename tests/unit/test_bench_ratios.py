"""The benchmark report's ratios: each server level against the engine measured around it."""

from __future__ import annotations

import pytest

from bench.run import around, model_size_section, ratios

OWN = "openvino-cpu-bf16"


def engine_row(config: str, batch: int, images_per_s: float) -> dict:
    median_ms = batch * 1e3 / images_per_s
    return {
        "config": config,
        "batch": batch,
        "median_ms": median_ms,
        "ms_per_image": median_ms / batch,
        "images_per_s": images_per_s,
    }


def check(own: float, reference: float, reference_1_ms: float) -> dict:
    """One engine checkpoint, as bench.engine.Checkpoint returns it."""
    return {
        "own": engine_row(OWN, 8, own),
        "reference": engine_row("reference", 4, reference),
        "reference_batch_1": engine_row("reference", 1, 1e3 / reference_1_ms),
    }


def level(users: int, images_per_s: float, p50_ms: float, p99_ms: float = 0.0) -> dict:
    return {"users": users, "images_per_s": images_per_s, "p50_ms": p50_ms, "p99_ms": p99_ms}


def report(levels: list[dict], overload: dict) -> dict:
    # The whole run's table: a fast machine (16/s bf16, 8/s reference, 125 ms at batch 1).
    rows = [
        engine_row("reference", 1, 8.0),
        engine_row("reference", 4, 8.0),
        engine_row(OWN, 1, 13.0),
        engine_row(OWN, 8, 16.0),
    ]
    return {
        "engine": {"rows": rows},
        "server": {
            "backend": OWN,
            "levels": levels,
            "overload": overload,
            "max_batch": 8,
            "max_queue_wait_ms": 3000.0,
        },
    }


def test_each_level_is_set_against_the_engine_around_it() -> None:
    # The machine slows by a tenth between the first checkpoints and the last ones; the
    # server keeps 95% of the engine throughout.
    fast, slow = check(16.0, 8.0, 125.0), check(14.4, 7.2, 138.9)
    one = level(1, 11.0, 70.0) | {"engine_around": around(fast, fast)}
    saturated = level(16, 15.2, 1000.0) | {"engine_around": around(fast, fast)}
    overload = level(100, 0.95 * 14.4, 2800.0, 3300.0) | {"engine_around": around(slow, slow)}
    r = report([one, saturated], overload)

    paired = ratios(r)
    assert paired["saturation_over_own_engine_limit"] == pytest.approx(0.95)
    assert paired["saturation_over_reference"] == pytest.approx(1.9)
    assert paired["p50_at_1_user_over_reference_batch_1"] == pytest.approx(0.56)
    # The slowdown is the machine's, not the server's: the overload level keeps its share.
    assert paired["overload_over_saturation"] == pytest.approx(1.0)
    # Against the one table of the whole run, the drift reads as lost throughput.
    assert ratios(r, paired=False)["overload_over_saturation"] == pytest.approx(0.9)
    # Budget plus one batch of 8 at the table's 16/s: 3000 + 500 ms.
    assert paired["overload_p99_over_budget_plus_batch"] == pytest.approx(3300 / 3500)


def test_a_level_takes_the_mean_of_the_checkpoints_before_and_after_it() -> None:
    a = around(check(16.0, 8.0, 120.0), check(14.0, 7.0, 140.0))
    assert a["own_images_per_s"] == pytest.approx(15.0)
    assert a["reference_images_per_s"] == pytest.approx(7.5)
    assert a["reference_batch_1_ms"] == pytest.approx(130.0)
    assert (a["own_batch"], a["reference_batch"]) == (8, 4)


def test_without_checkpoints_the_whole_run_table_is_used() -> None:
    r = report([level(1, 11.0, 75.0), level(16, 15.2, 1000.0)], level(100, 14.0, 2800.0, 3000))
    got = ratios(r)
    assert got == ratios(r, paired=False)
    assert got["saturation_over_own_engine_limit"] == pytest.approx(15.2 / 16.0)
    assert got["p50_at_1_user_over_reference_batch_1"] == pytest.approx(75.0 / 125.0)


def test_the_model_size_level_is_set_against_the_engine_around_it() -> None:
    # 1024x1024 PNGs keep 94% of the engine; the same images at the model's input size, 99%
    # of an engine that ran a little slower around that level.
    fast, slower = check(16.0, 8.0, 125.0), check(15.0, 7.5, 130.0)
    saturated = level(32, 0.94 * 16.0, 1900.0) | {"engine_around": around(fast, fast)}
    model_size = level(32, 0.99 * 15.0, 1800.0) | {
        "engine_around": around(slower, slower),
        "label": "32, model-size uploads",
    }
    saturated["mean_batch"] = model_size["mean_batch"] = 7.9
    r = report([saturated], None)
    r["server"]["model_size"] = model_size

    got = ratios(r)
    assert got["saturation_over_own_engine_limit"] == pytest.approx(0.94)
    assert got["model_size_saturation_over_own_engine_limit"] == pytest.approx(0.99)
    # It is not a sweep level: saturation stays the sweep's.
    assert got["saturation_over_reference"] == pytest.approx(0.94 * 16.0 / 8.0)

    saturated["cpu"] = {"decoding_ms": 7.4}
    section = "\n".join(model_size_section(r))
    assert "32 users posting images at the model's input size" in section
    assert "decoding 7.4 ms of CPU per image" in section
    assert "| 1024x1024 PNG | 15.04 |" in section and "| model-size PNG | 14.85 |" in section
    assert ratios(report([saturated], None)).keys() == got.keys() - {
        "model_size_saturation_over_own_engine_limit"
    }
