"""What the audit log costs a request: POST /api/v1/predictions (anonymous, heatmap=none)
on the tiny preset, in process, with CHEXRAY_AUDIT_LOG off and on, one client and several
at once; and the wait for the record's commit itself (AuditLog.append) beside the
request's total time, with how many records each transaction carried (group commit).

python bench/audit.py                                   # SQLite in a temporary folder
python bench/audit.py --url postgresql+psycopg://postgres@127.0.0.1:5432/bench_audit

The tiny networks make the engine's share small, so the log's share is as large as it
will ever be; with the full-size ensemble a request takes ~100x longer and the same
commit. PostgreSQL: use a cluster with fsync on (the test clusters run with it off).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def http(base: str, requests: int, clients: int) -> dict[str, float]:
    """Anonymous predictions (heatmap=none) from `clients` at once: per-request times."""
    import httpx

    from tests.support.api import xray

    image = xray(1)
    totals: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        for _ in range(20):  # warm-up
            await c.post("/api/v1/predictions?heatmap=none", files={"image": image})
        left = requests

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t = time.perf_counter()
                r = await c.post("/api/v1/predictions?heatmap=none", files={"image": image})
                totals.append((time.perf_counter() - t) * 1e3)
                assert r.status_code == 200, r.text

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    return {
        "p50_ms": statistics.median(totals),
        "p90_ms": percentile(totals, 0.9),
        "per_s": requests / seconds,
    }


async def log_alone(url: str, media: Path, records: int, clients: int) -> dict[str, float]:
    """The log by itself: `clients` tasks appending records one after another, each
    awaiting its commit, as requests do. The wait per record and records per commit."""
    import datetime as dt

    from server.service import audit as service_audit
    from server.service.audit import AuditContext, AuditLog, entry
    from server.store.store import Store

    store = Store(url, media)
    await store.open()
    log = AuditLog(store)
    groups: list[int] = []
    table_append = service_audit.table.append

    def counted(s, entries):
        groups.append(len(entries))
        return table_append(s, entries)

    service_audit.table.append = counted
    context = AuditContext("rest", "anonymous", None, None, "127.0.0.1", "0" * 32)
    record = entry(context, dt.datetime.now(dt.UTC), digest="0" * 64, size=40_000, error=None)
    record.update(probabilities=[0.5] * 5, thresholds=[0.5] * 5, calls=[True] * 5)
    waits: list[float] = []
    left = records

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t = time.perf_counter()
            await log.append(dict(record))
            waits.append((time.perf_counter() - t) * 1e3)

    try:
        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        service_audit.table.append = table_append
        await log.close()
        store.close()
    return {
        "wait_p50_ms": statistics.median(waits),
        "wait_p90_ms": percentile(waits, 0.9),
        "per_commit": statistics.mean(groups),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="", help="database URL (default: SQLite, temporary)")
    parser.add_argument("--repo", type=Path, help="a tiny model repository (default: built)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    from tests.support.server_process import running_server

    with tempfile.TemporaryDirectory() as tmp:
        repo = args.repo
        if repo is None:
            from tests.support.tiny_repo import build_tiny_repo

            repo = Path(tmp) / "repo"
            build_tiny_repo(repo)
        print(f"database: {args.url or 'SQLite (WAL, synchronous=NORMAL)'}; tiny preset")
        print("\nPOST /api/v1/predictions (anonymous, heatmap=none), a server process:")
        print(f"{'clients':>7} {'log':>4} {'p50 ms':>7} {'p90 ms':>7} {'req/s':>7}")
        for clients in args.clients:
            for audit in (False, True):
                root = Path(tempfile.mkdtemp(dir=tmp))
                env = {
                    "CHEXRAY_AUDIT_LOG": str(audit).lower(),
                    "CHEXRAY_BACKEND": "onnxruntime",
                    "CHEXRAY_MAX_QUEUE_WAIT_MS": "60000",
                    "CHEXRAY_ANONYMOUS_HOURLY_PER_ADDRESS": "0",
                    "CHEXRAY_LOG_LEVEL": "warning",
                }
                if args.url:
                    env["CHEXRAY_DATABASE_URL"] = args.url
                with running_server(repo, root, **env) as (base, _):
                    r = asyncio.run(http(base, args.requests, clients))
                print(
                    f"{clients:>7} {'on' if audit else 'off':>4} {r['p50_ms']:>7.2f} "
                    f"{r['p90_ms']:>7.2f} {r['per_s']:>7.1f}"
                )
        print("\nThe log alone (AuditLog.append awaited per record, group commit):")
        print(f"{'clients':>7} {'wait p50 ms':>11} {'p90 ms':>7} {'records/commit':>14}")
        for clients in (*args.clients, 64):
            url = args.url or f"sqlite:///{Path(tempfile.mkdtemp(dir=tmp)) / 'a.db'}"
            r = asyncio.run(log_alone(url, Path(tmp) / "media", args.requests, clients))
            print(
                f"{clients:>7} {r['wait_p50_ms']:>11.2f} {r['wait_p90_ms']:>7.2f} "
                f"{r['per_commit']:>14.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
