"""Switching the served model version on a real server process while clients keep posting
predictions: no request fails, readiness never drops, every answer names one of the two
versions and those asked after the switch name the new one; a broken version is refused
under the same load; `chexray models use` switches a running server."""

from __future__ import annotations

import re
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from chexray import cli
from server.runtime.manifest import load_manifest
from tests.support.api import PASSWORD, xray
from tests.support.server_process import running_server
from tests.support.versions import LOW, archive_version

CLIENTS = 4


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    status: int
    version: str | None


def _register(base: str, username: str) -> dict[str, str]:
    body = {"username": username, "email": f"{username}@example.org"}
    body |= {"password": PASSWORD, "password2": PASSWORD}
    assert httpx.post(base + "/api/v1/auth/register", json=body).status_code == 201
    r = httpx.post(base + "/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    return {"Authorization": f"Bearer {r.json()['token']}"}


class Load:
    """Client threads posting predictions back to back, and one watching readiness."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.calls: list[Call] = []
        self.not_ready: list[int] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._post, args=(i,)) for i in range(CLIENTS)]
        self.threads.append(threading.Thread(target=self._ready))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _post(self, seed: int) -> None:
        image = xray(seed)
        with httpx.Client(base_url=self.base, timeout=60) as h:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    r = h.post(
                        "/api/v1/predictions",
                        content=image,
                        headers={"content-type": "image/png"},
                        params={"heatmap": "none"},
                    )
                    status = r.status_code
                    version = r.json().get("model_version") if status == 200 else None
                except httpx.HTTPError:
                    status, version = 0, None
                with self.lock:
                    self.calls.append(Call(started, time.monotonic(), status, version))

    def _ready(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as h:
            while not self.stop.is_set():
                status = h.get("/health/ready").status_code
                if status != 200:
                    self.not_ready.append(status)
                time.sleep(0.05)

    def count(self) -> int:
        with self.lock:
            return len(self.calls)


def test_switching_versions_under_load(tiny_copy: Path, tmp_path: Path, capsys) -> None:
    new = archive_version(tiny_copy, LOW)
    broken = archive_version(tiny_copy, [*LOW[:4], 0.5], broken=True)
    old = load_manifest(tiny_copy).version
    with running_server(tiny_copy, tmp_path) as (base, _):
        admin = _register(base, "admin")
        with Load(base) as load:
            while load.count() < 20:
                time.sleep(0.05)
            # A broken version is refused; the old one keeps serving.
            r = httpx.post(f"{base}/api/v1/admin/models/{broken}/activate", headers=admin)
            assert r.status_code == 409 and r.json()["code"] == "version_refused", r.text
            switch_started = time.monotonic()
            r = httpx.post(f"{base}/api/v1/admin/models/{new}/activate", headers=admin, timeout=120)
            switched = time.monotonic()
            assert r.status_code == 200 and r.json()["changed"] is True, r.text
            settled = load.count() + 20
            while load.count() < settled:
                time.sleep(0.05)
        calls = load.calls
        errors = [c for c in calls if c.status != 200]
        during = [c for c in calls if c.ended >= switch_started and c.started <= switched]
        longest = max((c.ended - c.started for c in during), default=0.0)
        after = [c for c in calls if c.started > switched]
        with capsys.disabled():  # the figures, for whoever runs it with -s
            print(
                f"\nhot swap under load: {len(calls)} requests from {CLIENTS} clients, "
                f"{len(errors)} errors; the switch took {switched - switch_started:.2f} s, "
                f"{len(during)} requests overlapped it, the longest {longest * 1e3:.0f} ms "
                f"(median of all {statistics.median(c.ended - c.started for c in calls) * 1e3:.0f}"
                " ms); "
                f"{sum(c.version == old for c in calls)} answered by {old}, "
                f"{sum(c.version == new for c in calls)} by {new}"
            )
        assert errors == [] and load.not_ready == []
        assert {c.version for c in calls} == {old, new}
        assert after and {c.version for c in after} == {new}

        # The old engine finished its work and was stopped.
        deadline = time.monotonic() + 30
        while len(httpx.get(f"{base}/api/v1/admin/models", headers=admin).json()["engines"]) > 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        metrics = httpx.get(base + "/metrics").text
        assert re.search(rf'chexray_model_info\{{[^}}]*version="{new}"', metrics)
        assert not re.search(rf'chexray_model_info\{{[^}}]*version="{old}"', metrics)
        assert f'chexray_answers_total{{version="{old}"}}' in metrics

        # `chexray models use` on the running server: installed and switched at once.
        models = tmp_path / "models"
        token = admin["Authorization"].split()[1]
        use = ["models", "use", old, "--dir", str(models), "--server", base, f"--token={token}"]
        assert cli.main(use) == 0
        assert f"the server at {base} now serves it" in capsys.readouterr().out
        assert load_manifest(models).version == old
        r = httpx.post(
            base + "/api/v1/predictions",
            content=xray(),
            params={"heatmap": "none"},
            headers={"content-type": "image/png"},
        )
        assert r.json()["model_version"] == old
        # A version whose files are damaged is refused before the server is asked.
        refused = ["models", "use", broken, "--dir", str(models), "--server", base]
        assert cli.main([*refused, f"--token={token}"]) == 2
        assert "damaged" in capsys.readouterr().out
        assert load_manifest(models).version == old
        # Without a token: installed, for the next restart.
        assert cli.main(["models", "use", new, "--dir", str(models), "--server", base]) == 0
        assert "restart the server" in capsys.readouterr().out
        assert load_manifest(models).version == new
