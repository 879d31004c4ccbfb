"""Three `chexray serve` replicas on one PostgreSQL database (studies' files in it too,
CHEXRAY_MEDIA_STORE=database) behind a real HAProxy, round robin with health checks on
/health/ready. Signed-in clients register, log in, analyse, read their history and studies
and delete some, while one replica is SIGKILLed; then: no study that was answered 200 is
lost, every study reads the same through each surviving replica asked directly, the
sign-in limit counts failures across replicas, and the only 5xx answers are HAProxy's for
requests that the killed replica held."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_database
from tests.support.api import PASSWORD, xray
from tests.support.server_process import free_port, running_servers

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
REPLICAS = 3
KILLED = "r1"  # HAProxy's name of the replica that is killed
AUTH_LIMIT = 5  # failed log-ins per address and minute (CHEXRAY_AUTH_RATE_LIMIT)

# Round robin; a replica is taken out after one failed check (every 300 ms) and its
# connection failures are retried on another (redispatch); each answer names the replica
# that gave it, HAProxy's own errors included, and the log names it for every request by
# the client's X-Request-Id (a request whose answer never came has no header to read).
# `option forwardfor` appends the client's address to X-Forwarded-For, which the replicas
# believe from 127.0.0.1.
CONFIG = """\
global
    maxconn 512
    log stdout format raw local0

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1
    option forwardfor

frontend chexray
    bind 127.0.0.1:{port}
    default_backend replicas
    capture request header X-Request-Id len 64
    log-format "request %[capture.req.hdr(0)] %s %ST %tsc"
    http-after-response set-header X-Replica %s

backend replicas
    balance roundrobin
    option httpchk GET /health/ready
    http-check expect status 200
    default-server inter 300ms fall 1 rise 2
{servers}
"""


@contextlib.contextmanager
def running_haproxy(backends: list[str], root: Path) -> Iterator[str]:
    """HAProxy in front of `backends` (base URLs), named r0, r1, ...; yields its URL. Its
    log is root/haproxy.log (see `served_by`)."""
    port = free_port()
    servers = "\n".join(
        f"    server r{i} {url.removeprefix('http://')} check" for i, url in enumerate(backends)
    )
    config = root / "haproxy.cfg"
    config.write_text(CONFIG.format(port=port, servers=servers))
    log = root / "haproxy.log"
    with log.open("w") as out:
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        seen: set[str] = set()
        # Ready once every replica has answered through it.
        while seen != {f"r{i}" for i in range(len(backends))}:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"HAProxy did not start: {log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(base + "/health/ready", timeout=2)
                if r.status_code == 200:
                    seen.add(r.headers["x-replica"])
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def served_by(log: Path) -> dict[str, str]:
    """Request id -> the replica HAProxy sent it to, from its log."""
    lines = (line.split() for line in log.read_text().splitlines())
    return {p[1]: p[2] for p in lines if len(p) == 5 and p[0] == "request"}


@dataclass
class Answer:
    client: int
    kind: str
    status: int  # 0: no HTTP answer at all
    replica: str  # who answered: r0, r1, r2 (HAProxy's X-Replica)
    start: float
    request_id: str


@dataclass
class Client:
    """One signed-in user's thread: what it kept (answered 200), deleted (204), and the
    studies whose fate it cannot know (their request failed)."""

    n: int
    auth: dict[str, str]
    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)
    urls: dict[str, dict] = field(default_factory=dict)


class Traffic:
    ACTIONS = ("predict", "history", "read", "predict", "register", "read", "delete", "history")

    def __init__(self, base: str, clients: list[Client]) -> None:
        self.base, self.clients = base, clients
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[Answer] = []
        self.threads = [threading.Thread(target=self.run, args=(c,)) for c in clients]
        self.ids = itertools.count()

    def request(self, h: httpx.Client, c: Client, kind: str, method: str, url: str, **kw):
        """The answer, and whether it was a success; every answer is recorded."""
        start = time.monotonic()
        request_id = f"replicas-{next(self.ids)}"
        kw["headers"] = {**kw.get("headers", {}), "x-request-id": request_id}
        try:
            r = h.request(method, url, **kw)
        except httpx.TransportError:
            r = None  # HAProxy closes a connection whose answer had begun when a replica died
        status = r.status_code if r is not None else 0
        replica = r.headers.get("x-replica", "?") if r is not None else "?"
        with self.lock:
            self.answers.append(Answer(c.n, kind, status, replica, start, request_id))
        return r, r is not None and r.is_success

    def run(self, c: Client) -> None:
        counter = itertools.count()
        # A connection per request: HAProxy answers 502 for a request its replica dropped
        # only when it was the first on its client connection; a later one it closes
        # silently (as a server would), unlogged, and the test could not say whose it was.
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=self.base, timeout=60, headers=c.auth, limits=fresh) as h:
            for action in itertools.cycle(self.ACTIONS[c.n :] + self.ACTIONS[: c.n]):
                if self.stop.is_set():
                    return
                i = next(counter)
                getattr(self, action)(h, c, i)

    def predict(self, h: httpx.Client, c: Client, i: int) -> None:
        r, ok = self.request(
            h,
            c,
            "predict",
            "POST",
            "/api/v1/predictions",
            content=xray(seed=c.n * 10_000 + i),
            headers={"content-type": "image/png"},
            params={"heatmap": "url"},
        )
        if ok:
            body = r.json()
            c.kept.append(body["id"])
            c.urls[body["id"]] = body["urls"]

    def history(self, h: httpx.Client, c: Client, i: int) -> None:
        self.request(h, c, "history", "GET", "/api/v1/studies", params={"per_page": 5})

    def read(self, h: httpx.Client, c: Client, i: int) -> None:
        if not c.kept:
            return
        urls = c.urls[c.kept[i % len(c.kept)]]
        finding = ("Edema", "Cardiomegaly", "Atelectasis")[i % 3]
        for kind, url in (
            ("study", urls["study"]),
            ("image", urls["image"]),
            ("heatmap", urls["heatmap"]),
            ("finding heatmap", urls["heatmaps"][finding]),  # drawn and kept by a replica
        ):
            self.request(h, c, kind, "GET", url)

    def delete(self, h: httpx.Client, c: Client, i: int) -> None:
        if len(c.kept) < 3:
            return
        study = c.kept.pop(0)
        _, ok = self.request(h, c, "delete", "DELETE", c.urls[study]["study"])
        (c.deleted if ok else c.unsure).append(study)

    def register(self, h: httpx.Client, c: Client, i: int) -> None:
        # A new address per sign-up: the per-address limit is tested apart, below.
        name, via = f"u{c.n}x{i}", {"x-forwarded-for": f"10.{c.n}.{i // 250}.{i % 250 + 1}"}
        body = {"username": name, "email": f"{name}@example.org"}
        body |= {"password": PASSWORD, "password2": PASSWORD}
        _, ok = self.request(
            h, c, "register", "POST", "/api/v1/auth/register", json=body, headers=via
        )
        if ok:
            login = {"username": name, "password": PASSWORD}
            self.request(h, c, "login", "POST", "/api/v1/auth/login", json=login, headers=via)

    def successes(self, kind: str, after: float = 0.0) -> int:
        with self.lock:
            return sum(a.kind == kind and a.status == 200 and a.start > after for a in self.answers)

    def wait_for(self, kind: str, count: int, after: float = 0.0) -> None:
        deadline = time.monotonic() + 60
        while self.successes(kind, after) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"no {count} {kind}s: {Counter(a.status for a in self.answers)}")
            time.sleep(0.05)


def sign_up(base: str, name: str, address: str) -> dict[str, str]:
    via = {"x-forwarded-for": address}
    body = {"username": name, "email": f"{name}@example.org"}
    body |= {"password": PASSWORD, "password2": PASSWORD}
    with httpx.Client(base_url=base, timeout=30, headers=via) as h:
        assert h.post("/api/v1/auth/register", json=body).status_code == 201
        r = h.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
    return {"authorization": f"Bearer {r.json()['token']}"}


@pytest.mark.skipif(HAPROXY is None, reason="needs HAProxy (scripts/ensure-test-deps.sh)")
def test_replicas_share_studies_and_limits_and_survive_a_kill(
    tiny_repo: Path, tmp_path: Path, postgres
) -> None:
    env = {
        "CHEXRAY_DATABASE_URL": create_database(postgres, "chexray_replicas"),
        "CHEXRAY_MEDIA_STORE": "database",  # no volume shared: the files go with the rows
        "CHEXRAY_AUTH_RATE_LIMIT": f"{AUTH_LIMIT}/60",
        "CHEXRAY_TRUSTED_PROXIES": "127.0.0.1",
        "CHEXRAY_GRPC_PORT": "0",
        "CHEXRAY_INTRA_OP_THREADS": "1",
        "CHEXRAY_WARMUP_BATCH_SIZES": "1",
    }
    with (
        running_servers(tiny_repo, tmp_path, REPLICAS, **env) as replicas,
        running_haproxy([base for base, _ in replicas], tmp_path) as lb,
    ):
        clients = [Client(n, sign_up(lb, f"client{n}", f"192.0.2.{n + 1}")) for n in range(4)]
        traffic = Traffic(lb, clients)
        for t in traffic.threads:
            t.start()
        try:
            traffic.wait_for("predict", 12)
            killed = replicas[int(KILLED[1:])][1]
            killed.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            traffic.wait_for("predict", 12, after=killed_at)
        finally:
            traffic.stop.set()
            for t in traffic.threads:
                t.join(60)
        assert killed.wait(10) == -signal.SIGKILL
        survivors = [base for i, (base, _) in enumerate(replicas) if f"r{i}" != KILLED]
        answers = traffic.answers

        # No 5xx but HAProxy's for what the killed replica held, and no other failure; an
        # answer cut off (no status) was the killed replica's too, says HAProxy's log.
        sent_to = served_by(tmp_path / "haproxy.log")
        for a in answers:
            if a.status == 0:
                a.replica = sent_to.get(a.request_id, "not in HAProxy's log")
        by_status = Counter((a.status, a.replica) for a in answers)
        failed = [a for a in answers if not 200 <= a.status < 300]
        assert all(a.status in (0, 502, 503, 504) and a.replica == KILLED for a in failed), (
            by_status
        )
        after = {a.replica for a in answers if a.start > killed_at and a.status == 200}
        assert after == {"r0", "r2"}, by_status

        # No study answered 200 is lost, none deleted comes back, through every survivor:
        # a history holds what its client kept, and beyond it at most the studies whose
        # deletion failed and as many as its analyses that failed (kept by the killed
        # replica just before it died, their answer lost).
        images: dict[str, set[bytes]] = {}
        for c in clients:
            lost_answers = sum(a.client == c.n and a.kind == "predict" for a in failed)
            for base in survivors:
                with httpx.Client(base_url=base, timeout=30, headers=c.auth) as h:
                    listed = h.get("/api/v1/studies", params={"per_page": 100}).json()
                    ids = {s["id"] for s in listed["items"]}
                    assert set(c.kept) <= ids and not ids & set(c.deleted)
                    assert len(ids - set(c.kept) - set(c.unsure)) <= lost_answers
                    for study in c.kept:
                        urls = c.urls[study]
                        assert h.get(urls["study"]).status_code == 200
                        image = h.get(urls["image"])
                        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
                        images.setdefault(study, set()).add(image.content)
                        assert h.get(urls["heatmap"]).status_code == 200
                        assert h.get(urls["heatmaps"]["Edema"]).status_code == 200
                    for study in c.deleted:
                        assert h.get(c.urls[study]["study"]).status_code == 404
        assert len(images) == sum(len(c.kept) for c in clients) >= 8
        assert all(len(v) == 1 for v in images.values()), "the same bytes from each replica"
        # The figures, for `pytest -s`: what ran, what failed and where, what was kept.
        print(
            f"\nreplicas: {len(answers)} requests, 1 replica killed, by (status, replica): "
            f"{dict(sorted(by_status.items()))}; studies kept {len(images)}, "
            f"each read through {len(survivors)} survivors; lost 0"
        )

        # The sign-in limit counts one address's failures on whichever replica they land.
        via = {"x-forwarded-for": "203.0.113.99"}
        wrong = {"username": "client0", "password": "not the password"}
        with httpx.Client(base_url=lb, timeout=30, headers=via) as h:
            tries = [h.post("/api/v1/auth/login", json=wrong) for _ in range(AUTH_LIMIT)]
            assert [r.status_code for r in tries] == [401] * AUTH_LIMIT
            assert {r.headers["x-replica"] for r in tries} == {"r0", "r2"}
            refused = h.post("/api/v1/auth/login", json=wrong)
            assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
        for base in survivors:
            r = httpx.post(base + "/api/v1/auth/login", json=wrong, headers=via, timeout=30)
            assert r.status_code == 429, r.text
