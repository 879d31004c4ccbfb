"""Dynamic batching with a fake model: no mix-ups, real batches, overload, shutdown.

The batcher takes any `(instance, batch) -> outputs` callable; here a plain NumPy function
stands in for the fused graph, so the batching logic is tested without model files. The
same flow through the real engine is tests/integration/test_batcher_engine.py.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from prometheus_client import generate_latest

from server.errors import Unavailable
from server.runtime.admission import Overloaded
from server.runtime.batcher import DynamicBatcher
from server.runtime.metrics import EngineMetrics

SIZE = (12, 10)


def fake_model(instance: int, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: five 'probabilities' from its pixels and a 'CAM map' of its own rows,
    computed for the whole batch at once, as the fused graph does."""
    assert batch.dtype == np.uint8 and batch.ndim == 3
    x = batch.astype(np.float32) / 255.0
    probabilities = np.stack([x[:, k::5].mean(axis=(1, 2)) for k in range(5)], axis=1)
    cam_maps = np.repeat(x[:, None, :4, :4], 5, axis=1)
    return {"probabilities": probabilities, "cam_maps": cam_maps}


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8)


def images(n: int) -> list[np.ndarray]:
    return [np.full(SIZE, 10 * i, np.uint8) for i in range(n)]


def test_64_concurrent_images_each_get_their_own_result() -> None:
    uploads = [image(i) for i in range(64)]
    seen: list[int] = []

    def model(instance: int, batch: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(len(batch))
        return fake_model(instance, batch)

    async def main():
        b = DynamicBatcher(model, max_batch=8, max_wait_ms=50, max_queue=64)
        b.start()
        try:
            return await asyncio.gather(*(b.submit(u) for u in uploads))
        finally:
            await b.stop()

    together = asyncio.run(main())
    # Alone: the same image in a batch of its own.
    alone = np.stack([fake_model(0, u[None])["probabilities"][0] for u in uploads])
    got = np.stack([r.outputs["probabilities"] for r in together])
    np.testing.assert_allclose(got, alone, atol=1e-6)
    # No mix-ups: every result is closest to its own image's solo result.
    distance = np.abs(got[:, None, :] - alone[None, :, :]).sum(-1)
    assert (distance.argmin(1) == np.arange(64)).all()
    sizes = [r.batch_size for r in together]
    assert max(sizes) > 1, "batches of more than one image must form"
    assert max(sizes) <= 8
    assert sum(seen) == 64 and max(seen) == max(sizes)
    for r, u in zip(together, uploads, strict=True):
        assert r.outputs["cam_maps"].shape == (5, 4, 4)
        np.testing.assert_array_equal(r.outputs["cam_maps"][0], u[:4, :4] / np.float32(255))


class Gate:
    """Holds the worker thread inside the run function until released: a slow GPU on demand."""

    def __init__(self) -> None:
        self.open, self.entered = threading.Event(), threading.Event()
        self.batches: list[int] = []

    def __call__(self, instance: int, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        self.open.wait(10)
        self.batches.append(len(batch))
        return fake_model(instance, batch)


def test_overload_refuses_excess_and_completes_the_accepted() -> None:
    gate = Gate()
    metrics = EngineMetrics("tiny-0")

    async def main():
        b = DynamicBatcher(gate, max_batch=2, max_wait_ms=0, max_queue=3, metrics=metrics)
        b.start()
        imgs = images(8)
        first = asyncio.create_task(b.submit(imgs[0]))
        await asyncio.to_thread(gate.entered.wait, 5)  # the worker now holds image 0
        queued = [asyncio.create_task(b.submit(im)) for im in imgs[1:4]]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await b.submit(imgs[4])
        assert info.value.retry_after >= 1
        assert "queue is full (3 images waiting)" in str(info.value)
        assert b.queue_depth == 3
        gate.open.set()
        done = await asyncio.gather(first, *queued)
        await b.stop()
        return done

    done = asyncio.run(main())
    assert len(done) == 4 and all(r.outputs["probabilities"].shape == (5,) for r in done)
    assert gate.batches == [1, 2, 1]
    text = generate_latest(metrics.registry).decode()
    assert 'chexray_engine_rejected_total{model="ensemble",version="tiny-0"} 1.0' in text
    assert 'chexray_engine_batch_size_count{model="ensemble",version="tiny-0"} 3.0' in text
    assert 'chexray_engine_batch_size_sum{model="ensemble",version="tiny-0"} 4.0' in text
    assert 'chexray_engine_queue_depth{model="ensemble",version="tiny-0"} 0.0' in text


def test_a_caller_that_gives_up_does_not_break_its_batch() -> None:
    gate = Gate()

    async def main():
        b = DynamicBatcher(gate, max_batch=4, max_wait_ms=0, max_queue=10)
        b.start()
        imgs = images(5)
        first = asyncio.create_task(b.submit(imgs[0]))
        await asyncio.to_thread(gate.entered.wait, 5)
        waiting = [asyncio.create_task(b.submit(im)) for im in imgs[1:]]
        await asyncio.sleep(0)
        waiting[1].cancel()  # gives up while queued
        impatient = asyncio.create_task(asyncio.wait_for(b.submit(imgs[0]), 0.01))
        with pytest.raises(TimeoutError):
            await impatient
        gate.open.set()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        await b.stop()
        return results

    results = asyncio.run(main())
    assert isinstance(results[2], asyncio.CancelledError)
    ok = [r for i, r in enumerate(results) if i != 2]
    assert all(r.outputs["probabilities"].shape == (5,) for r in ok)
    assert gate.batches == [1, 3], "the cancelled and timed-out callers left no holes"
    # Each caller still got its own image's row.
    for r, im in zip(ok, [images(5)[i] for i in (0, 1, 3, 4)], strict=True):
        np.testing.assert_allclose(r.outputs["probabilities"], im[0, 0] / 255, atol=1e-6)


def test_shutdown_drains_in_flight_work() -> None:
    async def main():
        b = DynamicBatcher(fake_model, max_batch=4, max_wait_ms=1000, max_queue=32)
        b.start()
        pending = [asyncio.create_task(b.submit(im)) for im in images(10)]
        await asyncio.sleep(0)
        await b.stop()  # must not wait out the 1 s batch delay, nor drop anything
        assert all(t.done() for t in pending)
        with pytest.raises(Overloaded, match="not running"):
            await b.submit(images(1)[0])
        return [t.result() for t in pending]

    results = asyncio.run(main())
    assert len(results) == 10 and sum(1 for r in results if r.batch_size == 4) == 8


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    calls: list[int] = []
    metrics = EngineMetrics("tiny-0")

    def flaky(instance: int, batch: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return fake_model(instance, batch)

    async def main():
        b = DynamicBatcher(flaky, max_batch=4, max_wait_ms=20, max_queue=8, metrics=metrics)
        b.start()
        failed = await asyncio.gather(*(b.submit(im) for im in images(3)), return_exceptions=True)
        later = await b.submit(images(1)[0])
        await b.stop()
        return failed, later

    failed, later = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) and "device lost" in str(e) for e in failed)
    assert later.outputs["probabilities"].shape == (5,) and calls == [3, 1]
    text = generate_latest(metrics.registry).decode()
    assert (
        'chexray_engine_errors_total{kind="inference",model="ensemble",version="tiny-0"} 1.0'
        in text
    )


def test_a_hung_batch_times_its_callers_out_and_marks_the_batcher_stalled() -> None:
    gate = Gate()
    metrics = EngineMetrics("tiny-0")

    async def main():
        b = DynamicBatcher(
            gate, max_batch=2, max_wait_ms=0, max_queue=8, timeout_s=0.3, metrics=metrics
        )
        b.start()
        assert b.problem() is None
        with pytest.raises(Unavailable) as info:
            await b.submit(images(1)[0])
        assert info.value.code == "inference_timeout" and info.value.retry_after
        problem = b.problem()
        gate.open.set()  # the backend call returns at last
        while b._running_since:
            await asyncio.sleep(0.01)
        recovered = b.problem()
        await b.stop()
        return problem, recovered

    problem, recovered = asyncio.run(main())
    assert problem is not None and "running for over" in problem
    assert recovered is None
    text = generate_latest(metrics.registry).decode()
    labels = 'kind="inference_timeout",model="ensemble",version="tiny-0"'
    assert f"chexray_engine_errors_total{{{labels}}} 1.0" in text


def test_a_dead_worker_fails_every_waiting_caller_and_says_why() -> None:
    async def main():
        b = DynamicBatcher(fake_model, max_batch=4, max_wait_ms=50, max_queue=8)

        def broken_take():
            raise RuntimeError("a bug in batch assembly")

        b._take = broken_take  # a fault where no backend error handler reaches
        b.start()
        waiting = await asyncio.gather(*(b.submit(im) for im in images(3)), return_exceptions=True)
        with pytest.raises(Unavailable) as later:
            await b.submit(images(1)[0])
        problem = b.problem()
        await b.stop()
        return waiting, later.value, problem

    waiting, later, problem = asyncio.run(main())
    assert all(isinstance(e, Unavailable) and e.code == "engine_failed" for e in waiting)
    assert later.code == "engine_failed"
    assert problem is not None and "a bug in batch assembly" in problem


def test_batch_cost_is_measured_per_size_and_scaled_for_unseen_sizes() -> None:
    b = DynamicBatcher(fake_model, max_batch=8, max_wait_ms=0, max_queue=8)
    assert b.batch_seconds(4) > 0  # unmeasured: a careful guess, never zero
    b.observe(1, 0.10)
    b.observe(4, 0.20)
    b.observe(4, 0.30)  # recent batches weigh more
    assert b.batch_seconds(1) == pytest.approx(0.10)
    assert 0.20 < b.batch_seconds(4) < 0.30
    assert b.batch_seconds(8) == pytest.approx(b.batch_seconds(4) * 2)
