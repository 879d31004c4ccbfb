"""The engine's state for boot, readiness and callers, with stand-in engines."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from server.errors import Unavailable
from server.runtime.state import EngineState


class FakeEngine:
    def __init__(self) -> None:
        self.ready = False
        self.manifest = SimpleNamespace(version="tiny-0")
        self.provider = "fake"
        self.admission = SimpleNamespace(draining=False, in_flight=0)
        self.trouble: str | None = None

    def problem(self) -> str | None:
        return self.trouble

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        self.ready = False


def test_loading_then_ready_then_stopped() -> None:
    state = EngineState()
    assert state.status == "loading"
    with pytest.raises(Unavailable) as info:
        state.require()
    assert (info.value.code, info.value.retry_after) == ("not_ready", 5)
    assert state.checks() == {
        "models_loaded": False,
        "warmed_up": False,
        "engine_healthy": False,
        "accepting": True,
    }

    asyncio.run(state.boot(FakeEngine))
    assert state.status == "ready" and state.require() is state.engine
    assert all(state.checks().values()) and state.reason is None

    asyncio.run(state.stop())
    assert state.status == "stopped"
    with pytest.raises(Unavailable, match="still loading"):
        state.require()


def test_a_failed_load_is_kept_with_its_reason() -> None:
    def broken() -> FakeEngine:
        raise RuntimeError("ensemble.onnx: corrupted")

    state = EngineState()
    asyncio.run(state.boot(broken))  # never raises: the server stays up and says why
    assert state.status == "failed" and state.error == "ensemble.onnx: corrupted"
    with pytest.raises(Unavailable) as info:
        state.require()
    assert info.value.code == "models_unavailable" and info.value.retry_after is None
    assert "corrupted" in info.value.message


def test_a_sick_engine_fails_readiness_and_callers_with_its_reason() -> None:
    state = EngineState()
    asyncio.run(state.boot(FakeEngine))
    state.engine.trouble = "a batch has been running for over 60 s"
    assert state.checks()["engine_healthy"] is False
    assert "running for over 60 s" in state.reason
    with pytest.raises(Unavailable) as info:
        state.require()
    assert info.value.code == "engine_failed"
    state.engine.trouble = None  # the batch finished after all
    assert state.require() is state.engine


def test_draining_stops_admission_and_fails_readiness() -> None:
    state = EngineState()
    asyncio.run(state.boot(FakeEngine))
    state.drain()
    assert state.engine.admission.draining is True
    assert state.checks()["accepting"] is False
    assert state.reason == "shutting down: no new analyses are taken"
