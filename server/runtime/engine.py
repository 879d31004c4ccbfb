"""The engine: image bytes in, findings, probabilities and CAM maps out. No HTTP here.

admission (expected wait within budget) -> decode (thread pool) -> resize (thread pool) ->
dynamic batcher -> fused graph (worker thread per instance) -> thresholds. Tensor names
come from the manifest, checked against the contract (server/runtime/contract.py). Heatmaps
are drawn from the outputs by server/cam.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from prometheus_client import CollectorRegistry

from server import tracing
from server.errors import ChexrayError, InvalidInput
from server.runtime import contract
from server.runtime.admission import Admission
from server.runtime.backends import choose, open_backend
from server.runtime.batcher import DynamicBatcher
from server.runtime.decode import DecodedImage, decode
from server.runtime.intended_use import check as intended_use_check
from server.runtime.manifest import FINDINGS, Manifest
from server.runtime.metrics import EngineMetrics
from server.runtime.precision import gate
from server.runtime.preprocess import resize_for_model
from server.runtime.repository import verify_repository
from server.runtime.threads import side_pool, side_threads
from server.settings import Settings

log = logging.getLogger("chexray.runtime")
T = TypeVar("T")


@dataclass(frozen=True)
class Timings:
    decode_ms: float
    preprocess_ms: float
    queue_ms: float
    compute_ms: float  # the whole batch's session.run
    batch_size: int


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # [5], FINDINGS order
    calls: np.ndarray  # [5] bool: probability >= threshold
    thresholds: tuple[float, ...]
    member_probabilities: dict[str, np.ndarray]  # member -> [5]
    cam_probabilities: np.ndarray  # [5]
    cam_maps: np.ndarray  # [5, h, w], raw (ReLU and scaling happen when rendering)
    model_version: str
    trained: bool
    image: DecodedImage
    timings: Timings
    backend: str  # which backend, device and precision answered: openvino-cpu-bf16
    precision: str

    @property
    def findings(self) -> tuple[str, ...]:
        return FINDINGS


# What onnxruntime's device arena says when a batch does not fit under gpu_mem_limit.
_OUT_OF_DEVICE_MEMORY = ("Available memory of", "Failed to allocate memory", "out of memory")


def warm_up_error(
    exc: Exception, batch: int, instance: int, device: str, settings: Settings
) -> RuntimeError:
    """A warm-up failure that says what to change when the GPU ran out of its budget (a
    batch size that fits one start can miss by a megabyte the next: the arena fragments)."""
    message = f"warm-up of a batch of {batch} on instance {instance} failed: {exc}"
    if device == "cuda" and any(s in str(exc) for s in _OUT_OF_DEVICE_MEMORY):
        gib = 1024**3
        message += (
            f". The batch needs more device memory than each instance's share of "
            f"CHEXRAY_GPU_MEM_LIMIT ({settings.gpu_mem_limit / settings.instances / gib:.2f} "
            f"GiB: {settings.gpu_mem_limit / gib:.2f} GiB over {settings.instances} "
            "instances): lower CHEXRAY_MAX_BATCH or CHEXRAY_INSTANCES, or raise "
            "CHEXRAY_GPU_MEM_LIMIT"
        )
    return RuntimeError(message)


class Engine:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        """`manifest`: the repository's, already verified by the caller (checksumming a
        full-size repository takes seconds); verified here when not given."""
        self.settings = settings
        self.manifest: Manifest = manifest or verify_repository(settings.model_dir)
        self.input_size = contract.check_contract(self.manifest)
        self.choice = choose(settings, self.manifest)
        # Refuses (PrecisionRefused) a precision whose check against fp32 failed.
        self.precision_check = gate(self.choice, self.manifest, settings.model_dir, settings)
        self.backends = [
            open_backend(self.choice, self.manifest, settings.model_dir, settings)
            for _ in range(settings.instances)
        ]
        self.provider = self.backends[0].provider
        log.info(
            "engine: model %s, %d instance(s) of %s on %s, batches of up to %d within %.1f ms",
            self.manifest.version,
            settings.instances,
            self.choice.label,
            self.provider,
            settings.max_batch,
            settings.max_wait_ms,
        )
        # Registered only once the version is known to load: a refused version leaves no
        # series behind.
        self.metrics = EngineMetrics(self.manifest.version, registry)
        self.metrics.set_info(
            self.provider, self.manifest.trained, self.choice.backend, self.choice.precision
        )
        self.batcher = DynamicBatcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            instances=settings.instances,
            timeout_s=settings.inference_timeout_s,
            metrics=self.metrics,
        )
        self.admission = Admission(
            budget_s=settings.max_queue_wait_ms / 1000.0,
            max_in_flight=settings.max_queue,
            batch_capacity=settings.max_batch * settings.instances,
            batch_seconds=self.batcher.batch_seconds,
            on_refused=lambda code: self.metrics.rejected.inc(),
        )
        self.metrics.in_flight.set_function(lambda: self.admission.in_flight)
        self.decode_threads = side_threads(settings.decode_threads, self.choice.device == "cuda")
        self._pool = side_pool(self.decode_threads, "chexray-cpu", settings.side_work_nice)
        self.warmed_up = False
        # Told of every answer (not of shadow work): the engine state's rollout statistics
        # and shadow mirroring.
        self.observer: Callable[[Engine, Prediction], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Run each warm-up batch size once per instance, then accept work."""
        loop = asyncio.get_running_loop()
        for n in sorted(
            {min(n, self.settings.max_batch) for n in self.settings.warmup_batch_sizes}
        ):
            batch = np.zeros((n, *self.input_size), np.uint8)
            for i in range(len(self.backends)):
                t = time.perf_counter()
                try:
                    await loop.run_in_executor(None, self._run_batch, i, batch)
                except Exception as exc:
                    raise warm_up_error(exc, n, i, self.choice.device, self.settings) from exc
                # Admission's first estimate of a batch's cost, before real traffic.
                self.batcher.observe(n, time.perf_counter() - t)
                log.info(
                    "warm-up: batch %d on instance %d in %.0f ms",
                    n,
                    i,
                    (time.perf_counter() - t) * 1e3,
                )
        self.batcher.start()
        self.warmed_up = True

    async def stop(self) -> None:
        """Stop accepting, finish what is queued, release the pool."""
        self.warmed_up = False
        await self.batcher.stop()
        self._pool.shutdown(wait=True)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def ready(self) -> bool:
        return self.warmed_up

    def problem(self) -> str | None:
        """Why a warmed-up engine cannot serve now (a dead or stalled batch worker)."""
        return self.batcher.problem()

    # -- work ------------------------------------------------------------------------------

    def _run_batch(self, instance: int, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.backends[instance].run(batch)

    def run_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One fused-graph run on a prepared [N, H, W] uint8 batch, outside the batcher:
        for offline work (evaluation) that forms its own batches."""
        return self._run_batch(0, batch)

    def prepare(
        self, data: bytes, intended_use: bool | None = None
    ) -> tuple[DecodedImage, np.ndarray, float, float]:
        """Decode and resize (CPU-bound, runs in the pool). `intended_use`: True refuses a
        DICOM outside the intended use (server/runtime/intended_use.py), False analyses it
        with a warning; None (offline work on the user's own sets) does not look."""
        t0 = time.perf_counter()
        image = decode(data, self.settings.max_upload_bytes, self.settings.max_pixels)
        if intended_use is not None:
            intended_use_check(image, force=not intended_use)
        t1 = time.perf_counter()
        model_input = resize_for_model(image.pixels, self.input_size)
        return image, model_input, t1 - t0, time.perf_counter() - t1

    async def predict(self, data: bytes, force: bool = False) -> Prediction:
        """Bytes of a PNG, JPEG or DICOM -> Prediction. Raises a DecodeError, Overloaded, or
        UnprocessableInput `outside_intended_use` for a DICOM that says it is not a frontal
        chest radiograph, unless `force` (then the image's notes say so)."""
        self.metrics.requests.inc()
        try:
            started, image, model_input, decode_s, resize_s = await self._run_cpu(
                self._timed_prepare, data, not force
            )
        except ChexrayError as exc:
            self.metrics.errors.labels(kind=exc.code).inc()
            raise
        self.metrics.preprocess.observe(decode_s + resize_s)
        return await self._submit(image, model_input, decode_s, resize_s, started)

    async def predict_pixels(self, pixels: np.ndarray) -> Prediction:
        """An image already preprocessed by the caller (uint8 [H, W] at the model's input
        size) -> Prediction, through the same batcher as `predict`: no decode, no resize.
        InvalidInput when it is not that."""
        self.metrics.requests.inc()
        h, w = self.input_size
        if pixels.dtype != np.uint8 or pixels.shape != (h, w):
            self.metrics.errors.labels(kind="invalid_pixels").inc()
            raise InvalidInput(
                "invalid_pixels",
                f"pixels must be uint8 [{h}, {w}] (the model's input size), "
                f"not {pixels.dtype} {list(pixels.shape)}",
            )
        model_input = np.ascontiguousarray(pixels)
        image = DecodedImage(model_input, "pixels", w, h, 8, ["given at model resolution"])
        return await self._submit(image, model_input, 0.0, 0.0, None)

    async def predict_decoded(self, image: DecodedImage) -> Prediction:
        """An image another engine decoded -> this engine's Prediction (shadow work: the
        same pixels, resized to this model's input; not an answer, so not counted as one)."""
        self.metrics.requests.inc()
        t = time.perf_counter()
        model_input = await self._run_cpu(resize_for_model, image.pixels, self.input_size)
        resize_s = time.perf_counter() - t
        return await self._submit(image, model_input, 0.0, resize_s, None, answer=False)

    async def _submit(
        self,
        image: DecodedImage,
        model_input: np.ndarray,
        decode_s: float,
        resize_s: float,
        started: int | None,
        answer: bool = True,
    ) -> Prediction:
        """One preprocessed image through the dynamic batcher -> Prediction. `started`: when
        its decode began (ns, for the trace), None when it was not decoded here."""
        submitted = tracing.now_ns()
        result = await self.batcher.submit(model_input)
        if tracing.enabled():
            if started is not None:
                decoded = started + int(decode_s * 1e9)
                tracing.record("decode", started, decoded, **{"image.format": image.format})
                tracing.record("preprocess", decoded, decoded + int(resize_s * 1e9))
            batch_start = submitted + int(result.queue_s * 1e9)
            tracing.record("queue_wait", submitted, batch_start)
            tracing.record(
                "compute",
                batch_start,
                batch_start + int(result.compute_s * 1e9),
                **{"batch.size": result.batch_size, "backend": self.choice.label},
            )
        out = result.outputs
        thresholds = self.manifest.thresholds.values
        probs = out[contract.PROBABILITIES].astype(np.float32)
        prediction = Prediction(
            probabilities=probs,
            calls=probs >= np.asarray(thresholds, np.float32),
            thresholds=tuple(thresholds),
            member_probabilities={
                m.name: out[contract.MEMBER_PROBABILITIES][i]
                for i, m in enumerate(self.manifest.members)
            },
            cam_probabilities=out[contract.CAM_PROBABILITIES],
            cam_maps=out[contract.CAM_MAPS],
            model_version=self.manifest.version,
            trained=self.manifest.trained,
            image=image,
            timings=Timings(
                decode_ms=decode_s * 1e3,
                preprocess_ms=resize_s * 1e3,
                queue_ms=result.queue_s * 1e3,
                compute_ms=result.compute_s * 1e3,
                batch_size=result.batch_size,
            ),
            backend=self.choice.label,
            precision=self.choice.precision,
        )
        if answer:
            self.metrics.observe_answer(prediction.probabilities, prediction.calls)
            if self.observer is not None:
                try:
                    self.observer(self, prediction)
                except Exception:  # statistics must never cost a caller its answer
                    log.exception("observing an answer of %s failed", self.version)
        return prediction

    def _timed_prepare(
        self, data: bytes, intended_use: bool
    ) -> tuple[int, DecodedImage, np.ndarray, float, float]:
        """prepare, with its wall-clock start (for the trace's decode span); the input's
        digest for the audit log too, here rather than on the event loop, where hashing a
        1 MB upload (0.3 ms) would hold up every other request."""
        started = tracing.now_ns()
        image, model_input, decode_s, resize_s = self.prepare(data, intended_use)
        if self.settings.audit_log:
            image.sha256 = hashlib.sha256(data).hexdigest()
        return started, image, model_input, decode_s, resize_s

    async def _run_cpu(self, fn: Callable[..., T], *args: object) -> T:
        """Decoding and resizing in the engine's pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
