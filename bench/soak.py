"""The soak: a real server under mixed traffic at saturation for a long while (30 min by
default), watching its memory and checking every answer.

    python bench/soak.py                 # or: make soak

Workers (threads, one HTTP connection each) loop over a mix: anonymous analyses, signed-in
analyses (stored studies), history pages, study reads (one's own, and another user's, which
must answer 404), deletes, bad files and decompression bombs. Every answer's status is
counted; every analysis is checked against its image (each image has its own size, which
the answer echoes) and the probabilities it gave alone at the start (no mix-ups); at the
end each user's history must hold exactly the studies the workers created and did not
delete (none lost, none foreign). The server's RSS is sampled every few seconds. A refusal
(503) is counted and its Retry-After honoured.

Writes bench/results/soak-<machine>-<date>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import cpu_model  # noqa: E402
from bench.images import xray_png  # noqa: E402
from bench.run import free_port, wait_ready  # noqa: E402

PY = sys.executable
# An answer further than this from its image's answer alone is a mix-up (bf16 answers of one
# image in batches of different sizes differ by ~1e-4).
MIXUP_TOLERANCE = 2e-3
PASSWORD = "soak-password-123"
# What each worker does, by weight.
MIX = {
    "anonymous": 30,
    "signed_in": 30,
    "history": 10,
    "read_own": 10,
    "read_other": 4,
    "delete": 8,
    "bad_file": 4,
    "bomb": 4,
}
EXPECTED = {  # the status each action must get (besides 503 refusals)
    "anonymous": {200},
    "signed_in": {200},
    "history": {200},
    "read_own": {200},
    "read_other": {404},
    "delete": {204},
    "bad_file": {415, 422},
    "bomb": {413},
}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bombs() -> list[bytes]:
    """A 150-byte PNG claiming 30000x30000 pixels, and a real zlib bomb: 12000x12000 grey
    zeros (144 Mpx) compressed to ~140 KB."""

    def png(w: int, h: int, idat: bytes) -> bytes:
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b"")
        )

    rows = zlib.compressobj(9)
    side = 12000
    row = b"\x00" * (side + 1)
    body = b"".join(rows.compress(row) for _ in range(side)) + rows.flush()
    return [png(30000, 30000, zlib.compress(b"\x00" * 64)), png(side, side, body)]


def bad_files(sample: bytes) -> list[bytes]:
    return [
        b"this is not an image at all\n" * 20,
        os.urandom(4096),
        sample[: len(sample) // 3],  # a truncated PNG
    ]


class Http:
    """One keep-alive connection; reconnects when the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


@dataclass
class User:
    name: str
    token: str
    studies: dict[str, tuple[int, list[float]]] = field(default_factory=dict)  # id -> image
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Tally:
    codes: Counter = field(default_factory=Counter)  # (action, status) -> n
    unexpected: list[str] = field(default_factory=list)
    mixups: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, action: str, status: int, seconds: float, problem: str | None = None):
        with self.lock:
            self.codes[(action, status)] += 1
            if status != 503:
                self.latencies.setdefault(action, []).append(seconds)
            if problem and len(self.unexpected) < 200:
                self.unexpected.append(problem)


def size_of(k: int) -> int:
    return 1024 + 8 * k


def probabilities(body: bytes) -> list[float]:
    return [f["probability"] for f in json.loads(body)["findings"]]


def worker(
    port: int,
    users: list[User],
    me: User,
    images: list[bytes],
    reference: np.ndarray,
    junk: list[bytes],
    bomb_files: list[bytes],
    tally: Tally,
    stop_at: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    http_ = Http(port)
    auth = {"Authorization": f"Bearer {me.token}"}
    actions, weights = zip(*MIX.items(), strict=True)
    while time.monotonic() < stop_at:
        action = rng.choices(actions, weights)[0]
        problem = None
        start = time.perf_counter()
        if action in ("anonymous", "signed_in"):
            k = rng.randrange(len(images))
            headers = {"Content-Type": "image/png", **(auth if action == "signed_in" else {})}
            status, h, body = http_.request(
                "POST", "/api/v1/predictions?heatmap=none", images[k], headers
            )
            if status == 200:
                answer = json.loads(body)
                probs = [f["probability"] for f in answer["findings"]]
                off = float(np.abs(np.asarray(probs) - reference[k]).max())
                width = answer["image"]["width"]
                if off > MIXUP_TOLERANCE or width != size_of(k):
                    problem = (
                        f"{action}: image {k} ({size_of(k)} px) answered as {width} px, "
                        f"{off:.4f} away from its own answer"
                    )
                    with tally.lock:
                        tally.mixups += 1
                if action == "signed_in":
                    with me.lock:
                        me.studies[answer["id"]] = (k, probs)
        elif action == "history":
            status, h, body = http_.request("GET", "/api/v1/studies?per_page=20", headers=auth)
        elif action in ("read_own", "read_other", "delete"):
            owner = me if action != "read_other" else rng.choice([u for u in users if u is not me])
            with owner.lock:
                ids = list(owner.studies)
                if not ids:
                    continue
                study_id = rng.choice(ids)
                if action == "delete":
                    expected = owner.studies.pop(study_id)
            if action == "delete":
                status, h, body = http_.request(
                    "DELETE", f"/api/v1/studies/{study_id}", headers=auth
                )
                if status != 204:
                    with owner.lock:
                        owner.studies[study_id] = expected
            else:
                status, h, body = http_.request("GET", f"/api/v1/studies/{study_id}", headers=auth)
                if status == 200 and action == "read_own":
                    with me.lock:
                        stored = me.studies.get(study_id)
                    if stored and np.abs(np.asarray(probabilities(body)) - stored[1]).max() > 1e-6:
                        problem = f"study {study_id} reads back other probabilities"
                        with tally.lock:
                            tally.mixups += 1
        elif action == "bad_file":
            status, h, body = http_.request(
                "POST", "/api/v1/predictions", rng.choice(junk), {"Content-Type": "image/png"}
            )
        else:
            status, h, body = http_.request(
                "POST", "/api/v1/predictions", rng.choice(bomb_files), {"Content-Type": "image/png"}
            )
        seconds = time.perf_counter() - start
        if status != 503 and status not in EXPECTED[action]:
            problem = problem or f"{action}: HTTP {status}: {body[:200]!r}"
        tally.record(action, status, seconds, problem)
        if status == 503:
            time.sleep(float(h.get("retry-after", "1")))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def register(http_: Http, name: str) -> str:
    account = {"username": name, "email": f"{name}@example.org", "password": PASSWORD}
    status, _, body = http_.request(
        "POST",
        "/api/v1/auth/register",
        json.dumps({**account, "password2": PASSWORD}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 201, body
    status, _, body = http_.request(
        "POST",
        "/api/v1/auth/login",
        json.dumps({"username": name, "password": PASSWORD}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200, body
    return json.loads(body)["token"]


def audit(http_: Http, users: list[User]) -> dict:
    """Each user's history against what the workers kept: none lost, none foreign."""
    lost = foreign = changed = 0
    for u in users:
        seen: dict[str, list[float]] = {}
        page = 1
        while True:
            status, _, body = http_.request(
                "GET",
                f"/api/v1/studies?page={page}&per_page=100",
                headers={"Authorization": f"Bearer {u.token}"},
            )
            assert status == 200, body
            data = json.loads(body)
            for item in data["items"]:
                seen[item["id"]] = item
            if page >= data["pages"]:
                break
            page += 1
        lost += len(set(u.studies) - set(seen))
        foreign += len(set(seen) - set(u.studies))
        for study_id in set(u.studies) & set(seen):
            status, _, body = http_.request(
                "GET", f"/api/v1/studies/{study_id}", headers={"Authorization": f"Bearer {u.token}"}
            )
            if (
                status != 200
                or np.abs(np.asarray(probabilities(body)) - u.studies[study_id][1]).max() > 1e-6
            ):
                changed += 1
    kept = sum(len(u.studies) for u in users)
    return {"studies_kept": kept, "lost": lost, "foreign": foreign, "changed": changed}


def markdown(report: dict) -> str:
    r, a = report["rss"], report["audit"]
    codes = report["codes"]
    lines = [
        f"# CheXray soak, {report['date']}",
        "",
        f"{report['machine']}; server on {report['backend']}; model {report['model_version']}; "
        f"{report['workers']} workers for {report['minutes']:.0f} min; 1024x1024 PNG uploads.",
        "",
        "## Memory",
        "",
        f"RSS after warm-up {r['start_mb']:.0f} MB; after {r['settle_min']:.0f} min "
        f"{r['settled_mb']:.0f} MB; at the end {r['end_mb']:.0f} MB; peak {r['peak_mb']:.0f} MB. "
        f"Drift from minute {r['settle_min']:.0f} to the end: {r['drift_mb_per_hour']:+.1f} MB/h "
        f"(least squares), {r['growth_pct']:+.1f}% — " + ("flat." if r["flat"] else "NOT flat."),
        "",
        "## Answers",
        "",
        "| action | status | count | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for row in codes:
        lines.append(
            f"| {row['action']} | {row['status']} | {row['count']} | "
            f"{row['p50_ms'] if row['p50_ms'] is not None else ''} | "
            f"{row['p99_ms'] if row['p99_ms'] is not None else ''} |"
        )
    lines += [
        "",
        f"Analyses answered: {report['analyses']} ({report['analyses_per_s']:.2f}/s). "
        f"Unexpected answers: {report['unexpected_count']}. Mixed-up answers: "
        f"{report['mixups']} (an answer for another image's size, or more than "
        f"{report['mixup_tolerance']} from its image's answer alone; the closest two images' "
        f"answers differ by {report['closest_images_differ_by']:.4f}).",
        "",
        f"Server log: {report['server_tracebacks']} tracebacks, "
        f"{report['server_errors_logged']} ERROR lines.",
        "",
        "## Studies",
        "",
        f"Kept at the end: {a['studies_kept']}; lost: {a['lost']}; foreign (another user's, "
        f"or deleted, in a history): {a['foreign']}; read back changed: {a['changed']}.",
    ]
    if report["unexpected"]:
        lines += ["", "## Unexpected answers (first ones)", ""]
        lines += [f"- {x}" for x in report["unexpected"][:20]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] / 60 for s in report["rss"]["samples"]]
    mb = [s[1] for s in report["rss"]["samples"]]
    rate = report["rate_samples"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(t, mb, label="server RSS (MB)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(0, max(mb) * 1.2)
    ax2 = ax.twinx()
    ax2.plot(
        [x[0] / 60 for x in rate],
        [x[1] for x in rate],
        color="tab:orange",
        alpha=0.6,
        label="analyses/s",
    )
    ax2.set_ylabel("analyses answered per second")
    ax2.set_ylim(0, max([x[1] for x in rate] + [1]) * 1.3)
    ax.set_title(f"Soak: {report['minutes']:.0f} min, {report['workers']} workers")
    fig.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=ROOT / "models_onnx")
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--sample-s", type=float, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--set", action="append", default=[], metavar="CHEXRAY_X=V")
    args = p.parse_args()

    # Each image its own size: the size every answer echoes says whose answer it is, however
    # alike the model's probabilities for them are (an untrained ensemble's barely differ).
    images = [xray_png(i, size_of(i)) for i in range(args.images)]
    junk, bomb_files = bad_files(images[0]), bombs()
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="chexray-soak-"))
    env = {
        **os.environ,
        "CHEXRAY_MODEL_DIR": str(args.repo),
        "CHEXRAY_DATA_DIR": str(data),
        "CHEXRAY_PORT": str(port),
        "CHEXRAY_GRPC_PORT": "0",  # REST only here (bench/oip.py measures the protocol)
        "CHEXRAY_LOG_LEVEL": "warning",
        "CHEXRAY_AUTH_RATE_LIMIT": "1000/60",
        **dict(s.split("=", 1) for s in args.set),
    }
    log_path = data / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [PY, "-m", "chexray.cli", "serve", "--no-build"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready", proc)
        http_ = Http(port)
        status, _, body = http_.request("GET", "/api/v1/models")
        models = json.loads(body)
        # Each image alone, once: what every later answer for it must match. The report
        # gives how far apart the images' answers are: the check's power.
        reference = np.array(
            [
                probabilities(
                    http_.request(
                        "POST",
                        "/api/v1/predictions?heatmap=none",
                        im,
                        {"Content-Type": "image/png"},
                    )[2]
                )
                for im in images
            ]
        )
        # One account per worker: a worker's view of its studies is then the truth.
        spread = float(
            min(
                np.abs(reference[i] - reference[j]).max()
                for i in range(len(images))
                for j in range(i)
            )
        )
        print(f"closest two images' answers differ by {spread:.4f} at most", flush=True)
        users = [User(f"soak{i}", register(http_, f"soak{i}")) for i in range(args.workers)]
        tally = Tally()
        start = time.monotonic()
        stop_at = start + args.minutes * 60
        threads = [
            threading.Thread(
                target=worker,
                args=(
                    port,
                    users,
                    users[i],
                    images,
                    reference,
                    junk,
                    bomb_files,
                    tally,
                    stop_at,
                    i,
                ),
                daemon=True,
            )
            for i in range(args.workers)
        ]
        for t in threads:
            t.start()
        samples, rate_samples = [], []
        last_count, last_t = 0, start
        while any(t.is_alive() for t in threads):
            time.sleep(args.sample_s)
            now = time.monotonic()
            samples.append((now - start, rss_mb(proc.pid)))
            with tally.lock:
                answered = sum(
                    n
                    for (a, s), n in tally.codes.items()
                    if s == 200 and a in ("anonymous", "signed_in")
                )
            rate_samples.append((now - start, (answered - last_count) / (now - last_t)))
            last_count, last_t = answered, now
            if len(samples) % 12 == 0:
                print(
                    f"  {(now - start) / 60:5.1f} min: RSS {samples[-1][1]:.0f} MB, "
                    f"{rate_samples[-1][1]:.2f} analyses/s",
                    flush=True,
                )
        audit_result = audit(http_, users)
        duration = time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    server_log = log_path.read_text(errors="replace")
    tracebacks = server_log.count("Traceback")

    settle = min(5.0, args.minutes / 6)
    tail = [(t, m) for t, m in samples if t >= settle * 60]
    slope = float(np.polyfit([t for t, _ in tail], [m for _, m in tail], 1)[0]) * 3600
    settled = tail[0][1]
    growth = (samples[-1][1] - settled) / settled * 100
    codes = []
    for (action, status), n in sorted(tally.codes.items()):
        lat = sorted(tally.latencies.get(action, [])) if status != 503 else []
        codes.append(
            {
                "action": action,
                "status": status,
                "count": n,
                "p50_ms": round(lat[len(lat) // 2] * 1e3) if lat else None,
                "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3) if lat else None,
            }
        )
    analyses = sum(
        n for (a, s), n in tally.codes.items() if s == 200 and a in ("anonymous", "signed_in")
    )
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "backend": f"{models['backend']} {models['precision']} ({models['provider']})",
        "model_version": models["version"],
        "workers": args.workers,
        "minutes": duration / 60,
        "rss": {
            "samples": samples,
            "start_mb": samples[0][1],
            "settle_min": settle,
            "settled_mb": settled,
            "end_mb": samples[-1][1],
            "peak_mb": max(m for _, m in samples),
            "drift_mb_per_hour": slope,
            "growth_pct": growth,
            # Flat: under 5% from the settled level to the end.
            "flat": abs(growth) < 5,
        },
        "rate_samples": rate_samples,
        "codes": codes,
        "analyses": analyses,
        "analyses_per_s": analyses / duration,
        "unexpected_count": len(tally.unexpected),
        "unexpected": tally.unexpected,
        "mixups": tally.mixups,
        "mixup_tolerance": MIXUP_TOLERANCE,
        "closest_images_differ_by": spread,
        "audit": audit_result,
        "server_tracebacks": tracebacks,
        "server_errors_logged": sum(1 for line in server_log.splitlines() if " ERROR " in line),
    }
    name = re.sub(r"[^a-z0-9]+", "-", f"soak-{cpu_model()}-{os.cpu_count()}core".lower())
    stem = args.out / f"{name.strip('-')}-{report['date']}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))
    print(f"report: {stem}.md / .json / .png")
    ok = (
        report["rss"]["flat"]
        and not report["unexpected"]
        and not report["mixups"]
        and not tracebacks
        and not any(audit_result[k] for k in ("lost", "foreign", "changed"))
    )
    # The server's data (GBs of studies after 30 minutes) stays only when something is to
    # be looked into.
    if ok:
        shutil.rmtree(data, ignore_errors=True)
    else:
        print(f"the server's data and log are kept in {data}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
