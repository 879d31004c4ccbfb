"""The engines' life in one object: the version served (the primary engine), an optional
candidate beside it (canary or shadow), and those being retired after a switch.

Boot sets the primary, readiness reports on it, and every caller that needs an engine asks
for one: `admit` picks it (a pinned version, else the canary's share, else the primary),
holds the caller's place with it and remembers it for the rest of the request, so an
analysis admitted to an engine is answered by that engine even when the served version
changes meanwhile (`current`). `require` answers with a coded Unavailable while there is
no engine to give.

Switching versions (`activate`) builds and warms the new engine in a thread while the old
one serves, then swaps them between two requests' admissions (one assignment in the event
loop): new work goes to the new engine, the old one finishes what it admitted and is then
stopped. A version that cannot be loaded, or whose precision the gate refuses, is refused
(Conflict, with the reason) and nothing changes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from server.errors import Conflict, NotFound, Unavailable
from server.runtime.admission import Overloaded
from server.runtime.engine import Engine, Prediction
from server.runtime.manifest import Manifest, RepositoryError
from server.runtime.repository import (
    UnknownVersion,
    install_manifest,
    installed_versions,
    load_version,
)
from server.runtime.rollout import Mode, Rollout, RolloutReport, RolloutStats, report, share

log = logging.getLogger("chexray.runtime")

Status = Literal["loading", "ready", "failed", "stopped"]

# The engine that admitted the current request (one asyncio task and what it spawns).
_ADMITTED: ContextVar[Engine | None] = ContextVar("chexray_admitted_engine", default=None)
# A retired engine is stopped once what it admitted is done, or after this long at most.
RETIRE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class EngineView:
    version: str
    role: Literal["primary", "canary", "shadow", "retiring"]
    provider: str
    backend: str
    precision: str
    in_flight: int


class EngineState:
    def __init__(
        self,
        model_dir: Path | None = None,
        build: Callable[[Manifest], Engine] | None = None,
    ) -> None:
        """`model_dir`: the model repository, whose versions may be loaded beside the one
        booted; `build`: an engine for one of its manifests (loading it, checking its
        precision gate). Without them, only the booted engine is served."""
        self.engine: Engine | None = None  # the primary: what unpinned work goes to
        self.rollout: Rollout | None = None
        self.retiring: list[Engine] = []
        self.error: str | None = None
        self.model_dir = model_dir
        self._build = build
        self._stopped = False
        self._draining = False
        self._changing: str | None = None  # what is being changed, while it is
        self._tasks: set[asyncio.Task] = set()
        self._retired: dict[str, asyncio.Task] = {}

    # -- boot, readiness, shutdown ---------------------------------------------------------

    @property
    def status(self) -> Status:
        if self.error is not None:
            return "failed"
        if self._stopped:
            return "stopped"
        return "ready" if self.engine is not None and self.engine.ready else "loading"

    async def boot(self, build: Callable[[], Engine]) -> None:
        """Build the engine in a thread (loading sessions takes seconds), warm it up, and
        record the outcome; never raises, so a failed load leaves a server that says why."""
        try:
            engine = await asyncio.to_thread(build)
            self._adopt(engine)
            self.engine = engine
            await engine.start()
            log.info("ready: model %s on %s", engine.manifest.version, engine.provider)
        except Exception as exc:
            self.error = str(exc)
            log.error("the models failed to load: %s", exc)

    def _adopt(self, engine: Engine) -> None:
        engine.observer = self._observed
        if self._draining:
            engine.admission.draining = True

    def _all(self) -> list[Engine]:
        engines = [e for e in (self.engine, self.rollout and self.rollout.engine) if e]
        return engines + self.retiring

    async def stop(self) -> None:
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        for engine in self._all():
            await engine.stop()

    def require(self) -> Engine:
        """The primary engine, ready to predict; Unavailable (coded) while it is not."""
        if self.error is not None:
            raise Unavailable("models_unavailable", f"the models failed to load: {self.error}")
        if self.engine is None or not self.engine.ready:
            raise Unavailable(
                "not_ready", "the models are still loading; retry shortly", retry_after=5
            )
        problem = self.engine.problem()
        if problem is not None:
            raise Unavailable("engine_failed", f"the inference engine cannot serve: {problem}")
        return self.engine

    def drain(self) -> None:
        """Admit no new analyses (SIGTERM); those admitted carry on."""
        self._draining = True
        for engine in self._all():
            engine.admission.draining = True

    @property
    def in_flight(self) -> int:
        """Analyses admitted and not yet answered, on every engine."""
        return sum(e.admission.in_flight for e in self._all())

    @property
    def reason(self) -> str | None:
        """Why the engine cannot take work, when it cannot (for readiness)."""
        if self.error is not None:
            return f"the models failed to load: {self.error}"
        if self.engine is not None and self.engine.ready and self.engine.problem():
            return f"the inference engine cannot serve: {self.engine.problem()}"
        if self._draining:
            return "shutting down: no new analyses are taken"
        return None

    def checks(self) -> dict[str, bool]:
        ready = self.engine is not None and self.engine.ready
        return {
            "models_loaded": self.engine is not None,
            "warmed_up": ready,
            "engine_healthy": ready and self.engine.problem() is None,
            "accepting": not self._draining,
        }

    # -- which engine answers --------------------------------------------------------------

    def loaded(self) -> list[Engine]:
        """The engines that take work: the primary first, then the candidate."""
        return [e for e in (self.engine, self.rollout and self.rollout.engine) if e]

    def versions(self) -> list[str]:
        return [e.version for e in self.loaded()]

    def choose(self, version: str = "", key: str | None = None) -> Engine:
        """The engine for new work: that of `version` when pinned (Conflict
        `version_not_loaded` for an installed version not loaded, NotFound
        `unknown_model_version` for one never installed), else the canary for its share of
        keys, else the primary."""
        primary = self.require()
        if version:
            for engine in self.loaded():
                if engine.version == version:
                    if engine is not primary:
                        self._check_candidate(engine)
                    return engine
            raise self._not_loaded(version)
        rollout = self.rollout
        if (
            rollout is not None
            and rollout.mode == "canary"
            and rollout.engine.ready
            and rollout.engine.problem() is None
            and share(key) < rollout.fraction
        ):
            return rollout.engine
        return primary

    def _check_candidate(self, engine: Engine) -> None:
        if not engine.ready:
            raise Unavailable(
                "not_ready", f"version {engine.version} is still loading", retry_after=5
            )
        if (problem := engine.problem()) is not None:
            raise Unavailable(
                "engine_failed", f"version {engine.version}'s engine cannot serve: {problem}"
            )

    def _not_loaded(self, version: str) -> Conflict | NotFound:
        loaded = ", ".join(self.versions())
        installed = installed_versions(self.model_dir) if self.model_dir is not None else []
        if version in installed:
            return Conflict(
                "version_not_loaded",
                f"version {version!r} is installed but not loaded (loaded: {loaded}); an "
                "administrator can activate it or start a canary or shadow rollout of it",
                {"version": version, "loaded": self.versions()},
            )
        return NotFound(
            "unknown_model_version",
            f"there is no model version {version!r}: loaded are {loaded}",
            {"version": version, "loaded": self.versions()},
        )

    @contextmanager
    def admit(self, count: int = 1, version: str = "", key: str | None = None) -> Iterator[Engine]:
        """Places for `count` analyses with the engine that will answer them (see `choose`;
        within a request already admitted, its engine), held until the block ends; inside,
        `current()` is that engine. Overloaded (503) when the wait would exceed its budget."""
        held = _ADMITTED.get()
        if held is not None and (not version or held.version == version):
            engine = held
        else:
            engine = self.choose(version, key)
        with engine.admission.admit(count):
            token = _ADMITTED.set(engine)
            try:
                yield engine
            finally:
                _ADMITTED.reset(token)

    def current(self, version: str = "") -> Engine:
        """The engine this request was admitted to, else the one `choose` gives now."""
        held = _ADMITTED.get()
        if held is not None and (not version or held.version == version):
            return held
        return self.choose(version)

    # -- changing versions -----------------------------------------------------------------

    @asynccontextmanager
    async def _change(self, what: str) -> AsyncIterator[None]:
        """One change of versions at a time; Conflict `models_busy` for a second."""
        if self._changing is not None:
            raise Conflict(
                "models_busy", f"the models are being changed ({self._changing}); retry when done"
            )
        if self._build is None or self.model_dir is None:
            raise Conflict("models_fixed", "this server cannot load other model versions")
        self.require()
        self._changing = what
        try:
            yield
        finally:
            self._changing = None

    @property
    def changing(self) -> str | None:
        return self._changing

    async def _load(self, version: str) -> Engine:
        """Build and warm the engine of `version` beside those serving: in a thread, so they
        keep serving. Conflict `version_refused` (with the reason) when it cannot serve."""
        assert self._build is not None and self.model_dir is not None
        retiring = self._retired.get(version)
        if retiring is not None:  # its series and cache are its own until it is stopped
            await asyncio.shield(retiring)
        try:
            manifest = await asyncio.to_thread(load_version, self.model_dir, version)
        except UnknownVersion as exc:
            raise NotFound("unknown_model_version", str(exc), {"version": version}) from None
        except RepositoryError as exc:
            raise self._refused(version, exc) from None
        try:
            engine = await asyncio.to_thread(self._build, manifest)
        except Exception as exc:
            raise self._refused(version, exc) from None
        self._adopt(engine)
        try:
            await engine.start()
            problem = engine.problem()
        except Exception as exc:
            problem = str(exc)
        if problem is not None:
            await engine.stop()
            engine.metrics.retire()
            raise self._refused(version, problem)
        log.info("loaded: model %s on %s beside %s", version, engine.provider, self.versions())
        return engine

    def _refused(self, version: str, reason: object) -> Conflict:
        log.warning("version %s refused: %s", version, reason)
        return Conflict(
            "version_refused",
            f"version {version} cannot be served, so nothing changed: {reason}",
            {"version": version},
        )

    async def activate(self, version: str) -> bool:
        """Serve `version` to all new work (see the module's description); the candidate's
        engine when it is that version. True when it became primary; False when it already
        was. NotFound for an unknown version, Conflict when it is refused or another change
        is under way."""
        async with self._change(f"activating {version}"):
            old = self.require()
            if old.version == version:
                return False
            rollout = self.rollout
            if rollout is not None and rollout.engine.version == version:
                engine = rollout.engine
                self.rollout = None
            else:
                engine = await self._load(version)
                if self.engine is not old or self._stopped:  # shutting down meanwhile
                    await engine.stop()
                    raise Unavailable("shutting_down", "the server is stopping")
            # The switch: from here, new admissions go to `engine`.
            self.engine = engine
            if self.rollout is not None:
                self.rollout.stats = RolloutStats()  # it compares against another now
            log.info("switched: model %s serves, %s retires", version, old.version)
            await self._install(engine.manifest)
            self._retire(old)
            return True

    async def _install(self, manifest: Manifest) -> None:
        """Name the served version in the repository, so a restart serves it too."""
        assert self.model_dir is not None
        try:
            await asyncio.to_thread(install_manifest, self.model_dir, manifest)
        except OSError as exc:  # a read-only repository: served until the next restart
            log.warning(
                "version %s serves but the repository still names another: %s",
                manifest.version,
                exc,
            )

    async def start_rollout(self, mode: Mode, version: str, fraction: float = 0.0) -> None:
        """Load `version` beside the primary as a canary (answering `fraction` of the
        analyses) or a shadow (running every analysis again, answering none); a running
        rollout of the same version changes its mode and fraction, one of another is
        replaced."""
        async with self._change(f"starting a {mode} of {version}"):
            primary = self.require()
            if version == primary.version:
                raise Conflict(
                    "already_primary", f"version {version} is the one served", {"version": version}
                )
            rollout = self.rollout
            if rollout is not None and rollout.engine.version == version:
                self.rollout = Rollout(mode, rollout.engine, fraction)
                return
            engine = await self._load(version)
            if self._stopped:  # shutting down meanwhile
                await engine.stop()
                raise Unavailable("shutting_down", "the server is stopping")
            self.rollout = Rollout(mode, engine, fraction)
            if rollout is not None:
                self._retire(rollout.engine)
            log.info("%s of %s started beside %s", mode, version, primary.version)

    async def end_rollout(self) -> str:
        """Drop the candidate (its work admitted finishes first); its version. NotFound
        `no_rollout` when there is none."""
        async with self._change("ending the rollout"):
            rollout = self._require_rollout()
            self.rollout = None
            self._retire(rollout.engine)
            log.info("%s of %s ended", rollout.mode, rollout.engine.version)
            return rollout.engine.version

    async def promote(self) -> str:
        """The candidate becomes the primary (as `activate` does); its version."""
        version = self._require_rollout().engine.version
        await self.activate(version)
        return version

    def _require_rollout(self) -> Rollout:
        if self.rollout is None:
            raise NotFound("no_rollout", "no canary or shadow rollout is running")
        return self.rollout

    def _retire(self, engine: Engine) -> None:
        """Stop `engine` once what it admitted is answered (new work goes elsewhere)."""
        self.retiring.append(engine)
        task = asyncio.create_task(self._stop_when_idle(engine))
        self._retired[engine.version] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_when_idle(self, engine: Engine) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETIRE_TIMEOUT_S
        try:
            while engine.admission.in_flight > 0 and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if engine.admission.in_flight:
                log.warning(
                    "stopping model %s with %d analyses unfinished",
                    engine.version,
                    engine.admission.in_flight,
                )
            await engine.stop()
            engine.metrics.retire()
            log.info("retired: model %s stopped", engine.version)
        finally:
            self.retiring.remove(engine)
            if self._retired.get(engine.version) is asyncio.current_task():
                del self._retired[engine.version]

    # -- what the rollout sees -------------------------------------------------------------

    def _observed(self, engine: Engine, prediction: Prediction) -> None:
        """Every answer of every engine: the rollout's counts and latencies; in a shadow
        rollout, the primary's answers are run again on the candidate."""
        rollout = self.rollout
        if rollout is None:
            return
        rollout.stats.latency(engine.version, prediction)
        if rollout.mode == "shadow" and engine is self.engine:
            rollout.stats.mirrored += 1
            self._spawn(self._shadow(rollout, prediction))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        # In a context of its own: not the request's (its admission, its trace).
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, rollout: Rollout, answered: Prediction) -> None:
        """The same decoded image on the candidate, unless it is busy (then shed: shadow
        work never queues behind itself, and never takes the primary's places)."""
        candidate, stats = rollout.engine, rollout.stats
        admission = candidate.admission
        if (
            not candidate.ready
            or candidate.problem() is not None
            or admission.in_flight >= admission.capacity
        ):
            stats.shed += 1
            return
        try:
            with admission.admit():
                shadow = await candidate.predict_decoded(answered.image)
        except Overloaded:
            stats.shed += 1
            return
        except Exception as exc:
            stats.failed += 1
            log.warning("shadow analysis on %s failed: %s", candidate.version, exc)
            return
        stats.latency(candidate.version, shadow, answered=False)
        stats.compare(answered, shadow)

    def report(self) -> RolloutReport:
        """How the candidate compares with the primary so far. NotFound `no_rollout`."""
        return report(self._require_rollout(), self.require().version)

    def views(self) -> list[EngineView]:
        """Every engine held, with its role."""
        out = []
        for engine in self._all():
            if engine is self.engine:
                role = "primary"
            elif self.rollout is not None and engine is self.rollout.engine:
                role = self.rollout.mode
            else:
                role = "retiring"
            out.append(
                EngineView(
                    engine.version,
                    role,
                    engine.provider,
                    engine.choice.backend,
                    engine.choice.precision,
                    engine.admission.in_flight,
                )
            )
        return out
