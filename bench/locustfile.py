"""Locust users posting chest X-rays to /api/v1/predictions as fast as answers come back.

    CHEXRAY_BENCH_IMAGES=DIR locust -f bench/locustfile.py --headless -u 8 -r 8 -t 40s \
        --host http://127.0.0.1:8000

CHEXRAY_BENCH_QUERY sets the query string (default `heatmap=none`: the engine's work only;
`heatmap=inline` adds rendering and base64 of the overlay).

A refusal (503, the server's admission control) is recorded apart, as `REFUSED`, so the
answered requests' rate and latencies stay those of real answers; the user then waits the
Retry-After the server asked for, as a well-behaved client does.

With CHEXRAY_BENCH_LATENCIES=FILE the answered requests' latencies (ms) are also written to
FILE as a JSON list when Locust quits: Locust's own percentiles round times over a second
to 100 ms, too coarse to hold a latency against a budget.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import gevent
from locust import FastHttpUser, constant, events, task

IMAGES = [p.read_bytes() for p in sorted(Path(os.environ["CHEXRAY_BENCH_IMAGES"]).glob("*.png"))]
QUERY = os.environ.get("CHEXRAY_BENCH_QUERY", "heatmap=none")
NAME = "POST /api/v1/predictions"
REFUSED = NAME + " (refused)"
LATENCIES = os.environ.get("CHEXRAY_BENCH_LATENCIES")
_answered: list[float] = []


@events.request.add_listener
def _record(name: str, response_time: float, exception: Exception | None, **_: object) -> None:
    if LATENCIES and name == NAME and exception is None:
        _answered.append(response_time)


@events.quitting.add_listener
def _write(**_: object) -> None:
    if LATENCIES:
        Path(LATENCIES).write_text(json.dumps(_answered))


# FastHttpUser (geventhttpclient): the load generator shares the machine with the server,
# and costs it less CPU per request than the requests-based HttpUser.
class XrayUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def predict(self) -> None:
        body = random.choice(IMAGES)
        with self.client.post(
            f"/api/v1/predictions?{QUERY}",
            data=body,
            headers={"Content-Type": "image/png"},
            name=NAME,
            catch_response=True,
            timeout=300,
        ) as r:
            retry_after = None
            if r.status_code == 503 and r.headers.get("Retry-After"):
                r.request_meta["name"] = REFUSED
                retry_after = float(r.headers["Retry-After"])
                r.success()
            elif r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif len(r.json().get("findings", [])) != 5:
                r.failure("answer without five findings")
        if retry_after is not None:
            gevent.sleep(retry_after)
