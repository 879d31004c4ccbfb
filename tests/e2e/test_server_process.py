"""A real `chexray serve` process over real HTTP: the README's flows, then concurrent
anonymous predictions (none lost, none mixed up), then a clean shutdown."""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.api import post_image, register, xray
from tests.support.server_process import running_server


@pytest.fixture(scope="module")
def server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("server")
    with running_server(tiny_repo, root, CHEXRAY_MAX_BATCH="8", CHEXRAY_MAX_WAIT_MS="20") as s:
        yield s


def test_readme_flows_over_http(server) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as h:
        r = h.post("/api/v1/predictions", files={"image": ("chest.png", xray(), "image/png")})
        assert r.status_code == 200 and r.json()["heatmap_png_base64"]
        auth = register(h, "alice")
        study = h.post(
            "/api/v1/predictions",
            headers=auth,
            data={"title": "follow-up"},
            files={"image": ("chest.png", xray(1), "image/png")},
        ).json()
        history = h.get("/api/v1/studies", headers=auth).json()
        assert [s["id"] for s in history["items"]] == [study["id"]]
        heat = h.get(study["urls"]["heatmap"], headers=auth)
        assert heat.status_code == 200 and heat.content.startswith(b"\x89PNG")
        assert h.get(study["urls"]["heatmap"]).status_code == 404


def test_concurrent_anonymous_predictions_are_neither_lost_nor_mixed_up(server) -> None:
    base, _ = server
    uploads = [xray(seed=100 + i, size=(200 + i, 180)) for i in range(48)]

    def predict(data: bytes) -> tuple[list[float], dict]:
        with httpx.Client(base_url=base, timeout=60) as h:
            r = post_image(h, data, heatmap="none")
            assert r.status_code == 200, r.text
            return [f["probability"] for f in r.json()["findings"]], r.json()["timings"]

    alone = np.array([predict(u)[0] for u in uploads])
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(predict, uploads))
    together = np.array([p for p, _ in results])
    assert together.shape == (48, 5)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    distance = np.abs(together[:, None] - alone[None]).sum(-1)
    assert (distance.argmin(1) == np.arange(48)).all()
    assert max(t["batch_size"] for _, t in results) > 1


def test_decoding_yields_to_the_engine(server) -> None:
    """The decode threads run 10 nice steps below the server's other threads (the engine's
    and the event loop's keep the priority it started with)."""
    _, proc = server
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux thread nice")
    started = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # it inherited ours
    # Field 19 of /proc/PID/task/TID/stat, counted after the parenthesised name.
    nice = {
        int(t.name): int((t / "stat").read_text().rsplit(")", 1)[1].split()[16])
        for t in Path(f"/proc/{proc.pid}/task").iterdir()
    }
    assert nice[proc.pid] == started
    assert sum(n == min(19, started + 10) for n in nice.values()) >= 2  # the decode pool


def test_sigterm_shuts_down_cleanly(server) -> None:
    _, proc = server
    proc.send_signal(signal.SIGTERM)
    # uvicorn finishes in-flight requests, stops the engine, then re-raises the signal.
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Traceback" not in proc.stdout.read()
