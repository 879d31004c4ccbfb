"""Dynamic batching on the real tiny graph: no mix-ups, real batches, overload, shutdown."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from server.runtime.batcher import DynamicBatcher, Overloaded
from server.runtime.engine import Engine
from server.settings import Settings
from tests.support.images import anatomy, png


def engine_for(repo: Path, **settings) -> Engine:
    data = repo.parent / "engine-data"
    return Engine(Settings(model_dir=repo, data_dir=data, warmup_batch_sizes=(1,), **settings))


def test_64_concurrent_images_each_get_their_own_result(tiny_repo: Path) -> None:
    uploads = [
        png(np.rint(anatomy(180 + i, 150 + 2 * i, seed=i) * 255).astype(np.uint8))
        for i in range(64)
    ]

    async def main():
        engine = engine_for(tiny_repo, max_batch=8, max_wait_ms=50, max_queue=64)
        await engine.start()
        try:
            together = await asyncio.gather(*(engine.predict(u) for u in uploads))
            # Alone: the same image in a batch of its own, straight through the session.
            alone = []
            for u in uploads:
                _, model_input, _, _ = engine.prepare(u)
                alone.append(engine._run_batch(0, model_input[None])["probabilities"][0])
        finally:
            await engine.stop()
        return together, np.stack(alone), engine

    together, alone, engine = asyncio.run(main())
    got = np.stack([p.probabilities for p in together])
    np.testing.assert_allclose(got, alone, atol=1e-5)
    # No mix-ups: every result is closest to its own image's solo result.
    distance = np.abs(got[:, None, :] - alone[None, :, :]).sum(-1)
    assert (distance.argmin(1) == np.arange(64)).all()
    sizes = [p.timings.batch_size for p in together]
    assert max(sizes) > 1, "batches of more than one image must form"
    assert max(sizes) <= 8
    for p in together:
        np.testing.assert_allclose(p.cam_maps.shape[-2:], engine.manifest.cam.feature_map[1:])


class Gate:
    """Holds the worker thread inside run_batch until released: a slow GPU on demand."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.open, self.entered = engine, threading.Event(), threading.Event()
        self.batches: list[int] = []

    def __call__(self, instance: int, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        self.open.wait(10)
        self.batches.append(len(batch))
        return self.engine._run_batch(instance, batch)


def images(engine: Engine, n: int) -> list[np.ndarray]:
    return [np.full(engine.input_size, 10 * i, np.uint8) for i in range(n)]


def test_overload_refuses_excess_and_completes_the_accepted(tiny_repo: Path) -> None:
    engine = engine_for(tiny_repo)
    gate = Gate(engine)

    async def main():
        b = DynamicBatcher(gate, max_batch=2, max_wait_ms=0, max_queue=3)
        b.start()
        imgs = images(engine, 8)
        first = asyncio.create_task(b.submit(imgs[0]))
        await asyncio.to_thread(gate.entered.wait, 5)  # the worker now holds image 0
        queued = [asyncio.create_task(b.submit(im)) for im in imgs[1:4]]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await b.submit(imgs[4])
        assert info.value.retry_after >= 1
        assert "queue is full (3 images waiting)" in str(info.value)
        gate.open.set()
        done = await asyncio.gather(first, *queued)
        await b.stop()
        return done

    done = asyncio.run(main())
    assert len(done) == 4 and all(r.outputs["probabilities"].shape == (5,) for r in done)
    assert gate.batches == [1, 2, 1]


def test_a_caller_that_gives_up_does_not_break_its_batch(tiny_repo: Path) -> None:
    engine = engine_for(tiny_repo)
    gate = Gate(engine)

    async def main():
        b = DynamicBatcher(gate, max_batch=4, max_wait_ms=0, max_queue=10)
        b.start()
        imgs = images(engine, 5)
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


def test_shutdown_drains_in_flight_work(tiny_repo: Path) -> None:
    engine = engine_for(tiny_repo)

    async def main():
        b = DynamicBatcher(engine._run_batch, max_batch=4, max_wait_ms=1000, max_queue=32)
        b.start()
        pending = [asyncio.create_task(b.submit(im)) for im in images(engine, 10)]
        await asyncio.sleep(0)
        await b.stop()  # must not wait out the 1 s batch delay, nor drop anything
        assert all(t.done() for t in pending)
        with pytest.raises(Overloaded, match="not running"):
            await b.submit(images(engine, 1)[0])
        return [t.result() for t in pending]

    results = asyncio.run(main())
    assert len(results) == 10 and sum(1 for r in results if r.batch_size == 4) == 8
