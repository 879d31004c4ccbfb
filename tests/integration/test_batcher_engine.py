"""Dynamic batching through the real engine and fused graph: 64 concurrent uploads, each
answered with its own image's result (tests/unit/test_batcher.py has the batching logic)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

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
