"""The engine's Prometheus metrics, in a registry of their own (the API adds its HTTP
metrics to the same registry and serves it at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Per-batch compute on 2 CPU cores runs 0.3-6 s; on a GPU a few ms.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class EngineMetrics:
    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, m = self.registry, {"model": model}
        self.requests = Counter(
            "chexray_engine_requests", "Images submitted to the engine", ["model"], registry=r
        ).labels(**m)
        self.errors = _Partial(
            Counter(
                "chexray_engine_errors", "Engine errors by kind", ["model", "kind"], registry=r
            ),
            m,
        )
        self.rejected = Counter(
            "chexray_engine_rejected",
            "Analyses refused: expected wait over budget, too many in flight, queue full, "
            "or shutting down",
            ["model"],
            registry=r,
        ).labels(**m)
        self.in_flight = Gauge(
            "chexray_engine_in_flight",
            "Analyses admitted and not yet answered (uploading, decoding, queued, running)",
            ["model"],
            registry=r,
        ).labels(**m)
        self.queue_depth = Gauge(
            "chexray_engine_queue_depth", "Images waiting for a batch", ["model"], registry=r
        ).labels(**m)
        self.batch_size = Histogram(
            "chexray_engine_batch_size",
            "Images per session.run",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=r,
        ).labels(**m)
        self.queue_wait = Histogram(
            "chexray_engine_queue_wait_seconds",
            "Submit until the image's batch started",
            ["model"],
            buckets=SECONDS,
            registry=r,
        ).labels(**m)
        self.compute = Histogram(
            "chexray_engine_compute_seconds",
            "session.run time per batch",
            ["model"],
            buckets=SECONDS,
            registry=r,
        ).labels(**m)
        self.preprocess = Histogram(
            "chexray_engine_preprocess_seconds",
            "Decode and resize per image",
            ["model"],
            buckets=SECONDS,
            registry=r,
        ).labels(**m)
        self.render = Histogram(
            "chexray_engine_heatmap_seconds",
            "Heatmap rendering per image",
            ["model"],
            buckets=SECONDS,
            registry=r,
        ).labels(**m)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.compute.observe(seconds)


class _Partial:
    """A labelled metric with some labels fixed: `.labels(kind=...)` adds the rest."""

    def __init__(self, metric: Counter, fixed: dict[str, str]) -> None:
        self._metric, self._fixed = metric, fixed

    def labels(self, **labels: str) -> Counter:
        return self._metric.labels(**self._fixed, **labels)
