"""The engines' Prometheus metrics, in one registry (the API adds its HTTP metrics to the
same registry and serves it at /metrics).

Every series carries the model version of the engine it counts, so that engines of several
versions (the one served, a canary or shadow candidate, one being retired after a switch)
live side by side in one registry: the metric families are registered once per registry and
each engine takes its own labelled children. Besides the engine's own work, each version's
answers are counted with their calls and probabilities, per finding, for drift monitoring.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.runtime.findings import FINDINGS

# Per-batch compute on 2 CPU cores runs 0.3-6 s; on a GPU a few ms.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Probabilities in steps of 0.05: fine enough to see a version's scores drift.
PROBABILITY = tuple(round(0.05 * i, 2) for i in range(1, 21))
MODEL = "ensemble"
LABELS = ["model", "version"]


class _Families:
    """The metric families, registered once per registry."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "chexray_engine_requests", "Images submitted to the engine", LABELS, registry=r
        )
        self.errors = Counter(
            "chexray_engine_errors", "Engine errors by kind", [*LABELS, "kind"], registry=r
        )
        self.rejected = Counter(
            "chexray_engine_rejected",
            "Analyses refused: expected wait over budget, too many in flight, queue full, "
            "or shutting down",
            LABELS,
            registry=r,
        )
        self.in_flight = Gauge(
            "chexray_engine_in_flight",
            "Analyses admitted and not yet answered (uploading, decoding, queued, running)",
            LABELS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "chexray_engine_queue_depth", "Images waiting for a batch", LABELS, registry=r
        )
        self.batch_size = Histogram(
            "chexray_engine_batch_size",
            "Images per session.run",
            LABELS,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=r,
        )
        self.queue_wait = Histogram(
            "chexray_engine_queue_wait_seconds",
            "Submit until the image's batch started",
            LABELS,
            buckets=SECONDS,
            registry=r,
        )
        self.compute = Histogram(
            "chexray_engine_compute_seconds",
            "session.run time per batch",
            LABELS,
            buckets=SECONDS,
            registry=r,
        )
        self.preprocess = Histogram(
            "chexray_engine_preprocess_seconds",
            "Decode and resize per image",
            LABELS,
            buckets=SECONDS,
            registry=r,
        )
        self.render = Histogram(
            "chexray_engine_heatmap_seconds",
            "Heatmap rendering per image",
            LABELS,
            buckets=SECONDS,
            registry=r,
        )
        self.info = Gauge(
            "chexray_model_info",
            "The model versions loaded, and which backend and precision answer for each",
            ["version", "provider", "trained", "backend", "precision"],
            registry=r,
        )
        self.answers = Counter(
            "chexray_answers",
            "Analyses answered, by the model version that answered",
            ["version"],
            registry=r,
        )
        self.present = Counter(
            "chexray_findings_present",
            "Findings called present in answers, by version and finding",
            ["version", "finding"],
            registry=r,
        )
        self.probability = Histogram(
            "chexray_probability",
            "Each answer's probability per finding, by version (for drift monitoring)",
            ["version", "finding"],
            buckets=PROBABILITY,
            registry=r,
        )


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _families(registry: CollectorRegistry) -> _Families:
    with _LOCK:
        found = _FAMILIES.get(registry)
        if found is None:
            found = _FAMILIES[registry] = _Families(registry)
        return found


class EngineMetrics:
    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        """The series of the engine serving model `version`, in `registry` (a new one when
        not given)."""
        self.registry = registry or CollectorRegistry()
        self.version = version
        f = self._f = _families(self.registry)
        m = {"model": MODEL, "version": version}
        self._labels = m
        self.requests = f.requests.labels(**m)
        self.errors = _Partial(f.errors, m)
        self.rejected = f.rejected.labels(**m)
        self.in_flight = f.in_flight.labels(**m)
        self.queue_depth = f.queue_depth.labels(**m)
        self.batch_size = f.batch_size.labels(**m)
        self.queue_wait = f.queue_wait.labels(**m)
        self.compute = f.compute.labels(**m)
        self.preprocess = f.preprocess.labels(**m)
        self.render = f.render.labels(**m)
        self.answers = f.answers.labels(version)
        self._present = [f.present.labels(version, finding) for finding in FINDINGS]
        self._probability = [f.probability.labels(version, finding) for finding in FINDINGS]
        self._info: tuple[str, ...] | None = None

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.compute.observe(seconds)

    def observe_answer(self, probabilities: np.ndarray, calls: np.ndarray) -> None:
        """One answer of this version: its probabilities and calls, FINDINGS order."""
        self.answers.inc()
        for i in range(len(FINDINGS)):
            self._probability[i].observe(float(probabilities[i]))
            if calls[i]:
                self._present[i].inc()

    def set_info(self, provider: str, trained: bool, backend: str, precision: str) -> None:
        self._info = (self.version, provider, str(trained).lower(), backend, precision)
        self._f.info.labels(*self._info).set(1)

    def retire(self) -> None:
        """The engine is gone: drop the series that describe it now (loaded, in flight,
        queued); its counters and histograms stay, as Prometheus expects of counts."""
        labels = (MODEL, self.version)
        for gauge in (self._f.in_flight, self._f.queue_depth):
            _remove(gauge, labels)
        if self._info is not None:
            _remove(self._f.info, self._info)


def _remove(metric: Gauge, labels: Sequence[str]) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)


class _Partial:
    """A labelled metric with some labels fixed: `.labels(kind=...)` adds the rest."""

    def __init__(self, metric: Counter, fixed: dict[str, str]) -> None:
        self._metric, self._fixed = metric, fixed

    def labels(self, **labels: str) -> Counter:
        return self._metric.labels(**self._fixed, **labels)
