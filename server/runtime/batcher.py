"""Dynamic batching on asyncio: many callers' images, one `session.run` per batch.

A batch leaves when it holds `max_batch` images or when its oldest image has waited
`max_wait_ms` (Triton's max queue delay). The queue is bounded: past `max_queue` waiting
images `submit` raises Overloaded at once instead of letting memory and latency grow.
Each instance (one session each) runs its batches in its own worker thread; onnxruntime
releases the GIL, so the event loop keeps serving meanwhile.

It measures how long a batch of each size takes lately (admission's estimate of the wait),
and watches itself: a worker that dies fails its callers and the batcher's health, a batch
that runs past `timeout_s` marks it stalled, and no caller waits longer than `timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from server.errors import Unavailable
from server.runtime.admission import Overloaded
from server.runtime.metrics import EngineMetrics
from server.runtime.threads import named_pool

log = logging.getLogger("chexray.runtime")

RunBatch = Callable[[int, np.ndarray], dict[str, np.ndarray]]  # (instance, batch) -> outputs

UNMEASURED_BATCH_S = 1.0  # before any batch ran: assume a slow one, so admission is careful


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]  # this image's row of every output
    queue_s: float  # submit -> its batch started
    compute_s: float  # the batch's session.run
    batch_size: int


@dataclass
class _Pending:
    image: np.ndarray
    future: asyncio.Future
    enqueued: float


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        instances: int = 1,
        timeout_s: float = 60.0,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.max_queue, self.instances = max_queue, instances
        self.timeout_s = timeout_s
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        self._batch_s: dict[int, float] = {}  # batch size -> seconds per batch, lately
        self._running_since: dict[int, float] = {}  # instance -> its batch's start
        self.failure: str | None = None  # why a worker died, if one did

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- what a batch costs ----------------------------------------------------------------

    def observe(self, size: int, seconds: float) -> None:
        """Record a batch's run time (also fed by the engine's warm-up)."""
        last = self._batch_s.get(size)
        self._batch_s[size] = seconds if last is None else 0.7 * last + 0.3 * seconds

    def batch_seconds(self, size: int) -> float:
        """How long a batch of `size` takes lately; an unmeasured size is scaled from the
        nearest measured one, per image."""
        if size in self._batch_s:
            return self._batch_s[size]
        if not self._batch_s:
            return UNMEASURED_BATCH_S
        near = min(self._batch_s, key=lambda n: abs(n - size))
        return self._batch_s[near] * size / near

    # -- health ----------------------------------------------------------------------------

    @property
    def stalled(self) -> bool:
        """A batch has run longer than `timeout_s` (a hung backend call)."""
        now = time.perf_counter()
        return any(now - t > self.timeout_s for t in list(self._running_since.values()))

    def problem(self) -> str | None:
        """Why the batcher cannot serve, or None while it can."""
        if self.failure is not None:
            return self.failure
        if self._accepting and any(w.done() for w in self._workers):
            return "a batch worker stopped"
        if self.stalled:
            return f"a batch has been running for over {self.timeout_s:.0f} s"
        return None

    def start(self) -> None:
        if self._workers:
            return
        self._wakeup = asyncio.Event()
        self._executor = named_pool(self.instances, "chexray-run")
        self._accepting = True
        self._workers = [
            asyncio.create_task(self._worker(i), name=f"chexray-batcher-{i}")
            for i in range(self.instances)
        ]

    async def stop(self) -> None:
        """Refuse new work, finish everything already queued or running, then stop."""
        self._accepting = False
        if self._wakeup is not None:
            self._wakeup.set()
        if self._workers:
            await asyncio.gather(*self._workers)
        self._workers = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _retry_after(self) -> float:
        batches_ahead = len(self._queue) / self.max_batch / self.instances + 1
        return batches_ahead * self.batch_seconds(self.max_batch)

    async def submit(self, image: np.ndarray) -> BatchResult:
        """Queue one preprocessed image; wait for its share of a batch's outputs, at most
        `timeout_s` (then Unavailable: inference_timeout)."""
        if self.failure is not None:
            raise Unavailable("engine_failed", f"the inference engine failed: {self.failure}")
        if not self._accepting:
            raise Overloaded("the engine is not running (starting up or shutting down)", 5.0)
        if len(self._queue) >= self.max_queue:
            if self._metrics:
                self._metrics.rejected.inc()
            raise Overloaded(
                f"the inference queue is full ({self.max_queue} images waiting)",
                self._retry_after(),
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(image, future, time.perf_counter()))
        if self._metrics:
            self._metrics.queue_depth.set(len(self._queue))
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            if self._metrics:
                self._metrics.errors.labels(kind="inference_timeout").inc()
            raise Unavailable(
                "inference_timeout",
                f"no answer from the inference engine within {self.timeout_s:.0f} s; retry later",
                retry_after=self.timeout_s,
            ) from None

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if not item.future.done():  # a caller that gave up leaves no hole in the batch
                batch.append(item)
        if self._metrics:
            self._metrics.queue_depth.set(len(self._queue))
        return batch

    async def _worker(self, instance: int) -> None:
        try:
            await self._work(instance)
        except Exception as exc:  # a bug here must not leave callers waiting forever
            log.exception("batch worker %d died", instance)
            self.failure = f"batch worker {instance} died: {exc!r}"
            self._accepting = False
            while self._queue:
                pending = self._queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(
                        Unavailable("engine_failed", f"the inference engine failed: {exc!r}")
                    )

    async def _work(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            while not self._queue:
                if not self._accepting:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # Hold the batch open until it is full or its oldest image's wait is over.
            deadline = self._queue[0].enqueued + self.max_wait
            while len(self._queue) < self.max_batch and self._accepting:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            await self._run(loop, instance, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, instance: int, batch: list[_Pending]):
        started = time.perf_counter()
        self._running_since[instance] = started
        try:
            stacked = np.stack([p.image for p in batch])
            outputs = await loop.run_in_executor(self._executor, self._run_batch, instance, stacked)
        except Exception as exc:
            if self._metrics:
                self._metrics.errors.labels(kind="inference").inc()
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            del self._running_since[instance]
        compute = time.perf_counter() - started
        self.observe(len(batch), compute)
        if self._metrics:
            self._metrics.observe_batch(len(batch), compute)
        for i, p in enumerate(batch):
            queue_s = started - p.enqueued
            if self._metrics:
                self._metrics.queue_wait.observe(queue_s)
            if not p.future.done():
                row = {name: value[i] for name, value in outputs.items()}
                p.future.set_result(BatchResult(row, queue_s, compute, len(batch)))
