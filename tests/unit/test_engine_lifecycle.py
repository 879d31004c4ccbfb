"""Switching engines in the engine state, with stand-in engines and real admission: work
admitted to the old engine finishes on it, new work goes to the new one, the old one is
stopped only when its work is done, and one change runs at a time."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.errors import Conflict
from server.runtime import state as state_module
from server.runtime.admission import Admission
from server.runtime.rollout import share
from server.runtime.state import EngineState


class FakeEngine:
    def __init__(self, version: str) -> None:
        self.version = version
        self.manifest = SimpleNamespace(version=version)
        self.ready = False
        self.stopped = False
        self.provider = "fake"
        self.choice = SimpleNamespace(backend="fake", precision="fp32")
        self.admission = Admission(
            budget_s=10, max_in_flight=8, batch_capacity=4, batch_seconds=lambda n: 0.01
        )
        self.metrics = SimpleNamespace(retire=lambda: None)
        self.observer = None

    def problem(self) -> str | None:
        return None

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        self.ready, self.stopped = False, True


@pytest.fixture
def repository(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Versions v1..v3 "installed"; what gets installed is recorded."""
    installed: list[str] = []
    known = {"v1", "v2", "v3"}

    def load(directory: Path, version: str) -> SimpleNamespace:
        if version not in known:
            raise state_module.UnknownVersion(f"no version {version}")
        return SimpleNamespace(version=version)

    monkeypatch.setattr(state_module, "load_version", load)
    monkeypatch.setattr(state_module, "install_manifest", lambda d, m: installed.append(m.version))
    monkeypatch.setattr(state_module, "installed_versions", lambda d: sorted(known))
    return installed


def test_admitted_work_finishes_on_the_old_engine(tmp_path: Path, repository: list[str]) -> None:
    async def main() -> None:
        state = EngineState(tmp_path, lambda m: FakeEngine(m.version))
        await state.boot(lambda: FakeEngine("v1"))
        old = state.require()
        with state.admit() as admitted:
            assert admitted is old and old.admission.in_flight == 1
            assert await state.activate("v2") is True
            new = state.require()
            assert new.version == "v2" and repository == ["v2"]
            # This request stays with the engine it was admitted to, nested places too.
            assert state.current() is old
            with state.admit() as again:
                assert again is old and old.admission.in_flight == 2
            # A new request goes to the new engine.
            assert state.choose() is new
            await asyncio.sleep(0.1)
            assert not old.stopped and old in state.retiring
            assert state.status == "ready" and state.in_flight == 1
        for _ in range(100):
            if old.stopped:
                break
            await asyncio.sleep(0.02)
        assert old.stopped and state.retiring == [] and not new.stopped
        assert await state.activate("v2") is False  # already served

    asyncio.run(main())


def test_one_change_at_a_time_and_refusals_change_nothing(
    tmp_path: Path, repository: list[str]
) -> None:
    release = threading.Event()

    def slow_build(manifest: SimpleNamespace) -> FakeEngine:
        release.wait(5)
        if manifest.version == "v3":
            raise RuntimeError("precision fp16 failed its check")
        return FakeEngine(manifest.version)

    async def main() -> None:
        state = EngineState(tmp_path, slow_build)
        await state.boot(lambda: FakeEngine("v1"))
        first = asyncio.create_task(state.activate("v3"))
        await asyncio.sleep(0.05)
        with pytest.raises(Conflict) as busy:
            await state.start_rollout("shadow", "v2")
        assert busy.value.code == "models_busy"
        release.set()
        with pytest.raises(Conflict) as refused:
            await first
        assert refused.value.code == "version_refused" and "fp16" in refused.value.message
        assert state.require().version == "v1" and repository == []
        # Pinning: loaded, installed but not loaded, unknown.
        assert state.choose("v1") is state.require()
        with pytest.raises(Conflict, match="installed but not loaded"):
            state.choose("v2")
        with pytest.raises(state_module.NotFound):
            state.choose("v9")
        await state.start_rollout("canary", "v2", 1.0)
        assert state.choose("v2").version == "v2"
        assert state.choose(key="any request").version == "v2"  # a fraction of 1
        await state.start_rollout("canary", "v2", 0.0)
        assert {state.choose(key=str(i)).version for i in range(50)} == {"v1"}

    asyncio.run(main())


def test_the_canary_share_is_fixed_per_key() -> None:
    shares = [share(f"request-{i}") for i in range(2000)]
    assert shares == [share(f"request-{i}") for i in range(2000)]
    assert 0.45 < sum(s < 0.5 for s in shares) / len(shares) < 0.55
