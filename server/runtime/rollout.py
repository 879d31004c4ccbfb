"""A rollout: a candidate model version beside the served one, as a canary (answering a
share of the analyses) or a shadow (run again on a copy of each answered analysis), with
what it has seen since it started and the agreement report drawn from that."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from server.runtime.engine import Engine, Prediction
from server.runtime.findings import FINDINGS

Mode = Literal["canary", "shadow"]
LATENCIES_KEPT = 10_000  # per version, for the report's percentiles


def share(key: str | None) -> float:
    """A number in [0, 1) for the canary's split: the same for the same key."""
    if not key:
        return random.random()
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class RolloutStats:
    """What a rollout has seen since it started (or since the primary last changed)."""

    since: str = field(default_factory=lambda: _now())
    answers: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, deque[float]] = field(default_factory=dict)
    mirrored: int = 0  # primary answers handed to the candidate (shadow)
    compared: int = 0
    shed: int = 0  # not run: the candidate was busy
    failed: int = 0
    abs_diff: np.ndarray = field(default_factory=lambda: np.zeros(len(FINDINGS)))
    agree: np.ndarray = field(default_factory=lambda: np.zeros(len(FINDINGS), np.int64))

    def latency(self, version: str, prediction: Prediction, answered: bool = True) -> None:
        t = prediction.timings
        ms = t.decode_ms + t.preprocess_ms + t.queue_ms + t.compute_ms
        self.latencies.setdefault(version, deque(maxlen=LATENCIES_KEPT)).append(ms)
        if answered:
            self.answers[version] = self.answers.get(version, 0) + 1

    def compare(self, primary: Prediction, candidate: Prediction) -> None:
        self.compared += 1
        self.abs_diff += np.abs(primary.probabilities.astype(np.float64) - candidate.probabilities)
        self.agree += primary.calls == candidate.calls


@dataclass
class Rollout:
    mode: Mode
    engine: Engine
    fraction: float  # canary: the share of analyses it answers
    stats: RolloutStats = field(default_factory=RolloutStats)


@dataclass(frozen=True)
class FindingAgreement:
    finding: str
    mean_abs_difference: float | None
    call_agreement: float | None


@dataclass(frozen=True)
class Latency:
    version: str
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass(frozen=True)
class RolloutReport:
    mode: Mode
    primary: str
    candidate: str
    fraction: float | None
    since: str
    answers: dict[str, int]
    mirrored: int
    compared: int
    shed: int
    failed: int
    pending: int
    findings: list[FindingAgreement]
    call_agreement: float | None  # over every finding of every compared image
    latency: list[Latency]
    note: str


def report(rollout: Rollout, primary: str) -> RolloutReport:
    """How the candidate compares with the primary (its version `primary`) so far."""
    s = rollout.stats
    n = s.compared
    findings = [
        FindingAgreement(
            f,
            float(s.abs_diff[i] / n) if n else None,
            float(s.agree[i] / n) if n else None,
        )
        for i, f in enumerate(FINDINGS)
    ]
    latency = []
    for version, values in s.latencies.items():
        arr = np.asarray(values)
        p50, p90, p99 = np.percentile(arr, [50, 90, 99]) if len(arr) else (0, 0, 0)
        latency.append(Latency(version, len(arr), float(p50), float(p90), float(p99)))
    if rollout.mode == "shadow":
        note = (
            "every answer of the primary is run again on the candidate (shed when it is "
            "busy); the differences are on the same images"
        )
    else:
        note = (
            "canary: each analysis is answered by one version only, so no image can be "
            "paired; compare the versions' answers and latencies, or run a shadow rollout "
            "for differences on the same images"
        )
    return RolloutReport(
        mode=rollout.mode,
        primary=primary,
        candidate=rollout.engine.version,
        fraction=rollout.fraction if rollout.mode == "canary" else None,
        since=s.since,
        answers=dict(s.answers),
        mirrored=s.mirrored,
        compared=s.compared,
        shed=s.shed,
        failed=s.failed,
        pending=s.mirrored - s.compared - s.shed - s.failed,
        findings=findings,
        call_agreement=float(s.agree.sum() / (n * len(FINDINGS))) if n else None,
        latency=latency,
        note=note,
    )
