"""Runs a labelled set through the server's own engine: decode, resize, fused graph.

Images are decoded in a thread pool a few batches ahead of the graph, as the server does;
only the model-sized input is kept, so memory stays flat however large the set. An image
that is missing or unreadable is counted with its reason and left out, never fatal.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from evaluation.labels import LabelledSet
from server.runtime.contract import MEMBER_PROBABILITIES, PROBABILITIES
from server.runtime.decode import DecodeError
from server.runtime.engine import Engine
from server.runtime.manifest import FINDINGS, Manifest


@dataclass
class Scores:
    """Every readable image's labels and the engine's outputs for it."""

    model_version: str
    members: list[str]
    member_sha256: list[str]  # member outputs do not depend on weights or thresholds
    paths: list[str]
    labels: np.ndarray  # [n, 5]: 1, 0 or NaN (not counted)
    member_probabilities: np.ndarray  # [n, M, 5] in FINDINGS order
    probabilities: np.ndarray  # [n, 5]: the served ensemble
    unreadable: dict[str, list[str]] = field(default_factory=dict)  # reason -> paths
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        """Keep the outputs so that `calibrate --scores` need not run the images again."""
        np.savez_compressed(
            path,
            model_version=self.model_version,
            members=np.asarray(self.members),
            member_sha256=np.asarray(self.member_sha256),
            paths=np.asarray(self.paths),
            labels=self.labels,
            member_probabilities=self.member_probabilities,
            probabilities=self.probabilities,
            seconds=self.seconds,
        )

    def ensemble(self, weights: np.ndarray) -> np.ndarray:
        """[n, 5] ensemble probabilities under a normalised weights matrix [M, 5]."""
        return np.einsum("nmf,mf->nf", self.member_probabilities, weights)

    def relabelled(self, labelled: LabelledSet, manifest: Manifest) -> Scores:
        """These saved outputs with `labelled`'s labels (another uncertain-label policy may
        apply) and the ensemble the manifest serves now."""
        index = {str(p): i for i, p in enumerate(labelled.paths)}
        absent = [p for p in self.paths if p not in index]
        if absent:
            raise ValueError(
                f"{len(absent)} scored images are not in {labelled.source} with these options, "
                f"e.g. {absent[0]}: run the images again without --scores"
            )
        weights = np.asarray(manifest.weights_normalised, np.float64)
        return replace(
            self,
            model_version=manifest.version,
            labels=labelled.labels[[index[p] for p in self.paths]],
            probabilities=self.ensemble(weights),
        )

    @classmethod
    def load(cls, path: Path, manifest: Manifest) -> Scores:
        """Read saved scores; refuse them if the members that made them are not served."""
        try:
            with np.load(path, allow_pickle=False) as z:
                scores = cls(
                    model_version=str(z["model_version"]),
                    members=[str(x) for x in z["members"]],
                    member_sha256=[str(x) for x in z["member_sha256"]],
                    paths=[str(x) for x in z["paths"]],
                    labels=z["labels"],
                    member_probabilities=z["member_probabilities"],
                    probabilities=z["probabilities"],
                    seconds=float(z["seconds"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(
                f"{path}: not a scores.npz written by `chexray evaluate` ({exc})"
            ) from None
        served = [m.sha256 for m in manifest.members]
        if scores.member_sha256 != served:
            raise ValueError(
                f"{path}: these scores came from other networks (model {scores.model_version}); "
                "run the images again without --scores"
            )
        return scores


class Progress:
    """A progress bar on stderr; a line per 10 % when stderr is not a terminal."""

    def __init__(self, total: int, label: str = "images") -> None:
        self.total, self.label = total, label
        self.done, self.started = 0, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def update(self, n: int) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        fraction = self.done / self.total if self.total else 1.0
        filled = int(30 * fraction)
        line = (
            f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {self.label}  "
            f"{rate:.2f}/s  {_clock(elapsed)} elapsed, {_clock(left)} left"
        )
        if self.tty:
            print("\r" + line, end="" if self.done < self.total else "\n", file=sys.stderr)
        elif int(fraction * 10) > self._last_decile:
            self._last_decile = int(fraction * 10)
            print(line, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "--:--"
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


def _load(engine: Engine, path: Path) -> np.ndarray | str:
    """The model-sized input, or why there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing file"
    except OSError as exc:
        return f"unreadable file ({exc.strerror})"
    try:
        _image, model_input, _, _ = engine.prepare(data)
    except DecodeError as exc:
        return exc.code
    return model_input


def score(
    engine: Engine,
    labelled: LabelledSet,
    batch_size: int = 8,
    progress: bool = True,
) -> Scores:
    """Run every image of `labelled` through the fused graph in batches of `batch_size`."""
    manifest = engine.manifest
    m = len(manifest.members)
    started = time.perf_counter()
    bar = Progress(len(labelled.paths)) if progress else None
    kept: list[int] = []
    member_out: list[np.ndarray] = []
    ensemble_out: list[np.ndarray] = []
    unreadable: dict[str, list[str]] = {}
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        out = engine.run_batch(np.stack([x for _, x in pending]))
        kept.extend(i for i, _ in pending)
        member_out.append(out[MEMBER_PROBABILITIES])
        ensemble_out.append(out[PROBABILITIES])
        if bar:
            bar.update(len(pending))
        pending.clear()

    ahead = max(4 * batch_size, 2 * engine.decode_threads)
    with ThreadPoolExecutor(engine.decode_threads, "chexray-eval") as pool:
        window: deque[tuple[int, Future]] = deque()
        paths = iter(enumerate(labelled.paths))
        for i, path in paths:
            window.append((i, pool.submit(_load, engine, path)))
            if len(window) >= ahead:
                break
        while window:
            i, fut = window.popleft()
            nxt = next(paths, None)
            if nxt is not None:
                window.append((nxt[0], pool.submit(_load, engine, nxt[1])))
            result = fut.result()
            if isinstance(result, str):
                unreadable.setdefault(result, []).append(str(labelled.paths[i]))
                if bar:
                    bar.update(1)
                continue
            pending.append((i, result))
            if len(pending) >= batch_size:
                flush()
        flush()
    idx = np.asarray(kept, np.int64)
    return Scores(
        model_version=manifest.version,
        members=[mm.name for mm in manifest.members],
        member_sha256=[mm.sha256 for mm in manifest.members],
        paths=[str(labelled.paths[i]) for i in idx],
        labels=labelled.labels[idx],
        member_probabilities=(
            np.concatenate(member_out).astype(np.float64)
            if member_out
            else np.zeros((0, m, len(FINDINGS)))
        ),
        probabilities=(
            np.concatenate(ensemble_out).astype(np.float64)
            if ensemble_out
            else np.zeros((0, len(FINDINGS)))
        ),
        unreadable=unreadable,
        seconds=time.perf_counter() - started,
    )
