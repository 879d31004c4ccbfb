"""All benchmarks in one run, side by side on one machine, and the report.

    python bench/run.py                  # or: make bench

1. engine limit: the fused graph alone (bench/engine.py) per backend x precision x batch,
   beside the reference: onnxruntime fp32 with its default session settings;
2. the server under Locust: a real `chexray serve` process on its `auto` choice, default
   preset, 1024x1024 PNGs, a sweep of concurrent users; throughput, p50/p95/p99, failures,
   mean batch size (from /metrics), peak RSS; then an overload level (100 users by default)
   where admission control refuses what would wait past its budget; and, at the sweep's
   largest user count, the same images already at the model's input size: the server with
   decoding's CPU taken out, which shows what of the gap to the engine's limit decoding
   costs. The engine limits the ratios use are measured again before the first level and
   after each one, so every level is set against the engine as it ran around it (shared
   cores drift within minutes);
3. the legacy application's architecture (bench/legacy_baseline.py) under the same load at 1
   and 16 users;
4. bench/results/<machine>-<date>.{json,md,png}, and the three ratios printed last.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import Checkpoint, at_batch, best, cpu_model  # noqa: E402
from bench.images import write_images, write_model_size_images  # noqa: E402
from server.runtime.contract import check_contract  # noqa: E402
from server.runtime.manifest import load_manifest  # noqa: E402
from server.settings import Settings  # noqa: E402

PY = sys.executable
ANSWERED = "POST /api/v1/predictions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            answer = httpx.get(url, timeout=2)
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code == 200:
            return
        if answer is not None and (reason := _not_ready_reason(answer)):
            # a server whose models failed to load stays up to say why: waiting cannot help
            raise SystemExit(f"the server will not be ready: {reason}")
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout} s")


def _not_ready_reason(answer: httpx.Response) -> str | None:
    """The `error` of a 503 from /health/ready: set only when waiting cannot help."""
    try:
        body = answer.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# The server's threads by the names they carry to the system (server/runtime/threads.py).
DECODING = ("chexray-cpu", "chexray-render")
CPU_GROUPS = ("event_loop", "decoding", "rest")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds so far of a server's threads: the event loop (the process's first
    thread), decoding and drawing, and the rest (the engine's threads, the database's, ...).
    A thread that has ended is no longer counted: the server's pools keep theirs."""
    groups = dict.fromkeys(CPU_GROUPS, 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        group = (
            "event_loop"
            if task.name == str(pid)
            else "decoding"
            if name.startswith(DECODING)
            else "rest"
        )
        groups[group] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return groups


def cpu_use(before: dict[str, float], after: dict[str, float], requests: int, seconds: float):
    """A level's CPU by thread group: ms per request, and the event loop's and the whole
    server's share of one core over the level's `seconds` (Locust's start and the last
    answers included: a little under what the steady state uses)."""
    spent = {g: after[g] - before[g] for g in CPU_GROUPS}
    per = max(requests, 1)
    return {
        "spent_s": spent,
        "wall_s": seconds,
        **{f"{g}_ms": spent[g] * 1e3 / per for g in CPU_GROUPS},
        "event_loop_busy": spent["event_loop"] / seconds,
        "cores_busy": sum(spent.values()) / seconds,
    }


def cpu_table(levels: list[dict]) -> list[str]:
    """Where a sweep's server CPU went, per level (levels measured without it are left out)."""
    rows = [x for x in levels if x.get("cpu")]
    if not rows:
        return []
    return [
        "CPU of the server process per request (answered or refused), by thread: the event "
        "loop (HTTP, routing, the service's logic; one thread, so its share of one core caps "
        "the server's rate), decoding and resizing (the decode pool), and the rest (the "
        "engine's threads, the database writer). `cores busy`: the whole process over the "
        "level.",
        "",
        "| users | event loop ms | event loop, share of a core | decoding ms | rest ms "
        "| all ms | cores busy |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {x.get('label', x['users'])} | {c['event_loop_ms']:.2f} | "
            f"{c['event_loop_busy']:.2f} | "
            f"{c['decoding_ms']:.2f} | {c['rest_ms']:.2f} | "
            f"{c['event_loop_ms'] + c['decoding_ms'] + c['rest_ms']:.2f} | {c['cores_busy']:.2f} |"
            for x in rows
            for c in [x["cpu"]]
        ],
    ]


def batch_totals(base: str) -> tuple[float, float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("chexray_engine_batch_size_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("chexray_engine_batch_size_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total, count


def locust(
    base: str,
    users: int,
    seconds: int,
    images: Path,
    workdir: Path,
    query: str,
    processes: int = 1,
) -> dict:
    """One Locust run; `processes` > 1 forks that many load generators (one core each)."""
    prefix = workdir / f"locust-{users}"
    latencies = Path(f"{prefix}_latencies.json")
    latencies.unlink(missing_ok=True)
    env = {
        **os.environ,
        "CHEXRAY_BENCH_IMAGES": str(images),
        "CHEXRAY_BENCH_QUERY": query,
        "CHEXRAY_BENCH_LATENCIES": str(latencies),
    }
    subprocess.run(
        [
            PY,
            "-m",
            "locust",
            "-f",
            str(ROOT / "bench" / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{seconds}s",
            "--host",
            base,
            "--csv",
            str(prefix),
            "--only-summary",
            "--stop-timeout",
            "120",
            *(["--processes", str(processes)] if processes > 1 else []),
        ],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Answers and refusals (503 + Retry-After) are separate rows: rates and latencies are
    # those of answers; refusals are counted. The legacy baseline names its one route.
    with open(f"{prefix}_stats.csv") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh) if r["Type"] != ""}
    row = rows.get(ANSWERED) or next(r for n, r in rows.items() if not n.endswith("(refused)"))
    refused = rows.get(ANSWERED + " (refused)")
    p50, p95, p99 = (float(row[q]) for q in ("50%", "95%", "99%"))
    # Exact percentiles where the locustfile wrote the answered requests' latencies (the
    # legacy baseline's route has its own locustfile).
    times = json.loads(latencies.read_text()) if latencies.is_file() else []
    if times:
        p50, p95, p99 = (float(v) for v in np.percentile(times, [50, 95, 99]))
    return {
        "users": users,
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "refused": int(refused["Request Count"]) if refused else 0,
        "images_per_s": float(row["Requests/s"]),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
    }


def run_engine(repo: Path, workdir: Path, seconds: float, threads: int, name: str) -> dict:
    out = workdir / f"engine-{name}.json"
    subprocess.run(
        [
            PY,
            str(ROOT / "bench" / "engine.py"),
            "--repo",
            str(repo),
            "--json",
            str(out),
            "--seconds",
            str(seconds),
            "--threads",
            str(threads),
        ],
        check=True,
    )
    return json.loads(out.read_text())


def bracketed(before: dict, after: dict) -> dict:
    """The engine measured in two halves, before and after the server sweep, as one: each
    configuration and batch at the mean of its two medians. On shared cores a machine's
    speed drifts over minutes; the server's figures, taken between the halves, are then
    compared with the engine as it ran around them, not at one end of the run."""
    rows = []
    for b in before["rows"]:
        a = at_batch(after["rows"], b["config"], b["batch"])
        median_ms = (b["median_ms"] + a["median_ms"]) / 2
        rows.append(
            {
                **b,
                "median_ms": median_ms,
                "p90_ms": max(b["p90_ms"], a["p90_ms"]),
                "ms_per_image": median_ms / b["batch"],
                "images_per_s": b["batch"] * 1e3 / median_ms,
                "runs": b["runs"] + a["runs"],
                "halves_images_per_s": [b["images_per_s"], a["images_per_s"]],
            }
        )
    return {**before, "rows": rows}


def run_server(
    repo: Path,
    images: Path,
    workdir: Path,
    users: list[int],
    seconds: int,
    query: str,
    env_extra: dict[str, str],
    locust_processes: int = 1,
    overload_users: int = 0,
    checkpoint: Callable[[str], dict] | None = None,
    model_size_images: Path | None = None,
) -> dict:
    """The sweep; then, with `model_size_images`, a level at the sweep's largest user count
    posting those (`model_size`); then the overload level. With `checkpoint`, the engine is
    measured again before the first level and after each one (the server idle), and every
    level records the engine as it ran around it (`engine_around`)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = workdir / "server-data"
    env = {
        **os.environ,
        "CHEXRAY_MODEL_DIR": str(repo),
        "CHEXRAY_DATA_DIR": str(data),
        "CHEXRAY_PORT": str(port),
        "CHEXRAY_GRPC_PORT": "0",  # REST only here (bench/oip.py measures the protocol)
        "CHEXRAY_LOG_LEVEL": "warning",
        **env_extra,
    }
    proc = subprocess.Popen([PY, "-m", "chexray.cli", "serve", "--no-build"], cwd=ROOT, env=env)
    try:
        wait_ready(base + "/health/ready", proc)
        loaded = peak_rss_mb(proc.pid)
        models = httpx.get(base + "/api/v1/models", timeout=10).json()
        backend = f"{models['backend']}-{_device(models['provider'])}-{models['precision']}"
        marks = [checkpoint(backend)] if checkpoint else []
        levels = []
        plan = [(n, images) for n in users]
        if model_size_images is not None:
            plan.append((max(users), model_size_images))
        if overload_users:
            plan.append((overload_users, images))
        for n, posted in plan:
            before, cpu_before = batch_totals(base), thread_cpu_s(proc.pid)
            started = time.perf_counter()
            result = locust(base, n, seconds, posted, workdir, query, locust_processes)
            wall = time.perf_counter() - started
            after, cpu_after = batch_totals(base), thread_cpu_s(proc.pid)
            asked = result["requests"] + result["refused"]
            result["cpu"] = cpu_use(cpu_before, cpu_after, asked, wall)
            batches = after[1] - before[1]
            result["mean_batch"] = (after[0] - before[0]) / batches if batches else 0.0
            result["rss_mb"] = peak_rss_mb(proc.pid)
            if checkpoint:
                marks.append(checkpoint(backend))
                result["engine_around"] = around(marks[-2], marks[-1])
            tag = ", model-size uploads" if posted is model_size_images else ""
            if tag:
                result["label"] = f"{n}{tag}"
            levels.append(result)
            print(
                f"  server  {n:>3} users{tag}: {result['images_per_s']:.2f} images/s, "
                f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
                f"batch {result['mean_batch']:.1f}, failures {result['failures']}, "
                f"refused {result['refused']}, event loop {result['cpu']['event_loop_busy']:.2f} "
                f"of a core, server {result['cpu']['cores_busy']:.2f} cores",
                flush=True,
            )
        overload = levels.pop() if overload_users else None
        model_size = levels.pop() if model_size_images is not None else None
        peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    settings = Settings.from_env(env_extra)
    return {
        "levels": levels,
        "overload": overload,
        "model_size": model_size,
        "max_queue_wait_ms": settings.max_queue_wait_ms,
        "max_batch": settings.max_batch,
        "rss_loaded_mb": loaded,
        "rss_peak_mb": peak,
        "provider": models["provider"],
        "backend": backend,
        "model_version": models["version"],
        "settings": env_extra,
        "query": query,
    }


def around(before: dict, after: dict) -> dict:
    """The engine checkpoints on either side of a level, as one: the mean of each."""
    return {
        "own_images_per_s": (before["own"]["images_per_s"] + after["own"]["images_per_s"]) / 2,
        "own_batch": before["own"]["batch"],
        "reference_images_per_s": (
            before["reference"]["images_per_s"] + after["reference"]["images_per_s"]
        )
        / 2,
        "reference_batch": before["reference"]["batch"],
        "reference_batch_1_ms": (
            before["reference_batch_1"]["median_ms"] + after["reference_batch_1"]["median_ms"]
        )
        / 2,
    }


def _device(provider: str) -> str:
    return "cuda" if provider.startswith("CUDA") else "cpu"


def run_baseline(images: Path, workdir: Path, users: list[int], seconds: int) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([PY, str(ROOT / "bench" / "legacy_baseline.py"), "--port", str(port)])
    try:
        wait_ready(base + "/health/ready", proc)
        levels = []
        for n in users:
            result = locust(base, n, seconds, images, workdir, "")
            levels.append(result)
            print(
                f"  legacy  {n:>3} users: {result['images_per_s']:.2f} images/s, "
                f"p50 {result['p50_ms']:.0f} ms, failures {result['failures']}",
                flush=True,
            )
        peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    return {"levels": levels, "rss_peak_mb": peak}


def machine() -> dict:
    import onnxruntime as ort

    try:
        import openvino

        ov = openvino.__version__.split("-")[0]
    except ImportError:
        ov = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "openvino": ov,
        "platform": platform.platform(),
    }


def engine_then(report: dict, level: dict, paired: bool = True) -> dict:
    """The engine limits to set a server level against: those measured around it where the
    run took checkpoints (and `paired`), else the whole run's table."""
    if paired and "engine_around" in level:
        return level["engine_around"]
    rows = report["engine"]["rows"]
    own, reference = best(rows, report["server"]["backend"]), best(rows, "reference")
    return {
        "own_images_per_s": own["images_per_s"],
        "own_batch": own["batch"],
        "reference_images_per_s": reference["images_per_s"],
        "reference_batch": reference["batch"],
        "reference_batch_1_ms": at_batch(rows, "reference", 1)["median_ms"],
    }


def ratios(report: dict, paired: bool = True) -> dict:
    """Against the reference measured in the same run: onnxruntime fp32 with its default
    session settings at its best batch; and against the served backend's own limit. Each
    server level is set against the engine as it ran around that level (`paired`), or
    against the whole run's engine table."""
    rows = report["engine"]["rows"]
    server = report["server"]["levels"]
    sat = max(server, key=lambda r: r["images_per_s"])
    at_sat = engine_then(report, sat, paired)
    one = next((r for r in server if r["users"] == 1), None)
    p50_1 = (
        one["p50_ms"] / engine_then(report, one, paired)["reference_batch_1_ms"]
        if one
        else math.nan
    )
    out = {
        "saturation_over_reference": sat["images_per_s"] / at_sat["reference_images_per_s"],
        "p50_at_1_user_over_reference_batch_1": p50_1,
        "saturation_over_own_engine_limit": sat["images_per_s"] / at_sat["own_images_per_s"],
    }
    model_size = report["server"].get("model_size")
    if model_size:
        out["model_size_saturation_over_own_engine_limit"] = (
            model_size["images_per_s"] / engine_then(report, model_size, paired)["own_images_per_s"]
        )
    overload = report["server"].get("overload")
    if overload:
        # Admission by deadline: overload keeps the saturation throughput, and what is
        # accepted waits at most the budget plus its own batch. Both levels are taken
        # relative to the engine around them, so a drift of the machine between the two
        # is not counted as the server's.
        server_batch = report["server"]["max_batch"]
        batch_ms = at_batch(rows, report["server"]["backend"], server_batch)["median_ms"]
        limit_ms = report["server"]["max_queue_wait_ms"] + batch_ms
        out["overload_over_saturation"] = (
            overload["images_per_s"] / engine_then(report, overload, paired)["own_images_per_s"]
        ) / (sat["images_per_s"] / at_sat["own_images_per_s"])
        out["overload_p99_over_budget_plus_batch"] = overload["p99_ms"] / limit_ms
    if report.get("baseline"):
        base16 = next((r for r in report["baseline"]["levels"] if r["users"] == 16), None)
        srv16 = next((r for r in server if r["users"] == 16), None)
        if base16 and srv16 and base16["images_per_s"] > 0:
            out["server_over_legacy_at_16_users"] = srv16["images_per_s"] / base16["images_per_s"]
    return out


TARGETS = {
    "saturation_over_reference": (
        "server throughput at saturation / reference engine limit",
        ">= 1.9",
    ),
    "p50_at_1_user_over_reference_batch_1": (
        "server p50 at 1 user / reference batch-1 latency",
        "<= 0.6",
    ),
    "saturation_over_own_engine_limit": (
        "server throughput at saturation / its backend's engine limit",
        ">= 0.95",
    ),
    "model_size_saturation_over_own_engine_limit": (
        "server throughput, uploads at the model's input size (no decoding to speak of) / "
        "its backend's engine limit",
        "none: what decoding costs",
    ),
    "overload_over_saturation": (
        "server throughput under overload / at saturation",
        ">= 0.95",
    ),
    "overload_p99_over_budget_plus_batch": (
        "accepted p99 under overload / (wait budget + one batch)",
        "<= 1",
    ),
    "server_over_legacy_at_16_users": ("server / legacy throughput at 16 users", ">= 3"),
}


def engine_table(rows: list[dict]) -> list[str]:
    """Configurations as rows, batch sizes as columns: ms per image (images/s)."""
    configs = list(dict.fromkeys(r["config"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    lines = [
        "| configuration | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for c in configs:
        cells = []
        for b in batches:
            r = next((x for x in rows if x["config"] == c and x["batch"] == b), None)
            cells.append(f"{r['ms_per_image']:.0f} ms ({r['images_per_s']:.2f}/s)" if r else "")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines


def engine_drift(report: dict) -> str:
    """How far the machine's speed moved between the halves, for the two limits the ratios
    use."""
    rows = report["engine"]["rows"]
    parts = []
    for config in dict.fromkeys(["reference", report["server"]["backend"]]):
        r = best(rows, config)
        halves = r.get("halves_images_per_s")
        if halves:
            parts.append(
                f"{config} at batch {r['batch']}: {halves[0]:.2f} then {halves[1]:.2f} images/s"
            )
    return "; ".join(parts) + "." if parts else "one measurement."


def markdown(report: dict) -> str:
    m, r = report["machine"], report["ratios"]
    lines = [
        f"# CheXray benchmark, {report['date']}",
        "",
        f"{m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}, OpenVINO "
        f"{m.get('openvino')}; server on {report['server']['backend']} "
        f"({report['server']['provider']}); model {report['server']['model_version']}; "
        f"1024x1024 PNG uploads; query `{report['server']['query']}`; "
        f"{report['seconds']} s per level; total run {report['duration_s'] / 60:.1f} min.",
        "",
        "## Engine limit (fused graph alone), ms per image (images/s)",
        "",
        "`reference`: onnxruntime fp32 with its default session settings. The others: "
        "CheXray's backends with CheXray's settings (backend-device-precision; `-whole`: "
        "OpenVINO running the graph whole on every thread instead of its networks in parts "
        "side by side, CHEXRAY_OPENVINO_PARTS=1). Measured in "
        "two halves, before and after the server sweep, and averaged: " + engine_drift(report),
        "",
        *engine_table(report["engine"]["rows"]),
        "",
        "## Server under load (Locust)",
        "",
        "`engine then`: the served backend's limit at its best batch, measured just before and "
        "just after the level (the server idle) and averaged; `/ engine`: the level's share "
        "of it.",
        "",
        "| users | images/s | p50 ms | p95 ms | p99 ms | failures | mean batch | peak RSS MB "
        "| engine then | / engine |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {x['users']} | {x['images_per_s']:.2f} | {x['p50_ms']:.0f} | {x['p95_ms']:.0f} | "
            f"{x['p99_ms']:.0f} | {x['failures']}/{x['requests']} | {x['mean_batch']:.1f} | "
            f"{x['rss_mb']:.0f} | {engine_cells(report, x)} |"
            for x in report["server"]["levels"]
        ],
        "",
        f"Server RSS: {report['server']['rss_loaded_mb']:.0f} MB loaded and warmed up, "
        f"{report['server']['rss_peak_mb']:.0f} MB peak after the sweep.",
        "",
        *cpu_table(
            [
                *report["server"]["levels"],
                *filter(None, [report["server"].get(k) for k in ("model_size", "overload")]),
            ]
        ),
        *model_size_section(report),
    ]
    overload = report["server"].get("overload")
    if overload:
        x = overload
        lines += [
            "",
            f"## Overload: {x['users']} users, admission by deadline "
            f"(wait budget {report['server']['max_queue_wait_ms']:.0f} ms)",
            "",
            "Refused requests (503 + Retry-After) are counted apart; the users wait the "
            "Retry-After they are given. Rates and latencies are those of answered requests.",
            "",
            "| users | images/s | p50 ms | p95 ms | p99 ms | failures | refused | mean batch "
            "| engine then | / engine |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {x['users']} | {x['images_per_s']:.2f} | {x['p50_ms']:.0f} | {x['p95_ms']:.0f} "
            f"| {x['p99_ms']:.0f} | {x['failures']}/{x['requests']} | {x['refused']} | "
            f"{x['mean_batch']:.1f} | {engine_cells(report, x)} |",
        ]
    if report.get("baseline"):
        lines += [
            "",
            "## The legacy application's architecture (five Keras `predict` + PyTorch CAM, "
            "no batching)",
            "",
            "| users | images/s | p50 ms | p95 ms | p99 ms | failures |",
            "|---|---|---|---|---|---|",
            *[
                f"| {x['users']} | {x['images_per_s']:.2f} | {x['p50_ms']:.0f} | "
                f"{x['p95_ms']:.0f} | {x['p99_ms']:.0f} | {x['failures']}/{x['requests']} |"
                for x in report["baseline"]["levels"]
            ],
            "",
            f"Legacy baseline peak RSS: {report['baseline']['rss_peak_mb']:.0f} MB.",
        ]
    whole = ratios(report, paired=False)
    lines += [
        "",
        "## Ratios",
        "",
        "Each server level against the engine measured around it; in the last column, against "
        "the engine table of the whole run instead (its two halves, minutes away from most "
        "levels).",
        "",
        "| ratio | measured | target | against the whole run's table |",
        "|---|---|---|---|",
    ]
    for key, value in r.items():
        label, target = TARGETS[key]
        lines.append(f"| {label} | {value:.2f} | {target} | {whole[key]:.2f} |")
    return "\n".join(lines) + "\n"


def model_size_section(report: dict) -> list[str]:
    """The level posting images at the model's input size, beside the sweep's at the same
    user count."""
    x = report["server"].get("model_size")
    if not x:
        return []
    same = [y for y in report["server"]["levels"] if y["users"] == x["users"]]
    decoding = [y["cpu"]["decoding_ms"] for y in same if y.get("cpu")]
    cost = f" (decoding {decoding[0]:.1f} ms of CPU per image there)" if decoding else ""
    size = report["server"].get("model_input", "the model's input")
    return [
        "",
        f"## Without decoding: {x['users']} users posting images at the model's input size",
        "",
        "The sweep's images, resized beforehand as the server resizes an upload "
        f"(to {size}): the server decodes a few kilobytes and resizes nothing. Set beside "
        f"the sweep's level at the same users{cost}, it shows how much of the gap to the "
        "engine's limit is the CPU that decoding takes from the engine's cores, and how much "
        "is the server's own.",
        "",
        "| uploads | images/s | p50 ms | p99 ms | mean batch | engine then | / engine |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {y['images_per_s']:.2f} | {y['p50_ms']:.0f} | {y['p99_ms']:.0f} | "
            f"{y['mean_batch']:.1f} | {engine_cells(report, y)} |"
            for name, y in [*(("1024x1024 PNG", y) for y in same), ("model-size PNG", x)]
        ],
    ]


def engine_cells(report: dict, level: dict) -> str:
    """A level's `engine then` and `/ engine` cells."""
    if "engine_around" not in level:
        return " | "
    own = level["engine_around"]["own_images_per_s"]
    return f"{own:.2f} | {level['images_per_s'] / own:.2f}"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    series = [("CheXray server (p99)", "o-", report["server"]["levels"])]
    if report.get("baseline"):
        series.append(("legacy architecture (p99)", "s--", report["baseline"]["levels"]))
    for label, style, levels in series:
        xs = [x["images_per_s"] for x in levels]
        ys = [x["p99_ms"] / 1e3 for x in levels]
        ax.plot(xs, ys, style, label=label)
        for x, y, level in zip(xs, ys, levels, strict=True):
            ax.annotate(
                str(level["users"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    rows = report["engine"]["rows"]
    own = best(rows, report["server"]["backend"])["images_per_s"]
    reference = best(rows, "reference")["images_per_s"]
    ax.axvline(own, color="grey", linestyle=":", label=f"its backend's limit {own:.2f}/s")
    ax.axvline(reference, color="red", linestyle=":", label=f"reference limit {reference:.2f}/s")
    ax.set_xlabel("throughput (images/s); labels: concurrent users")
    ax.set_ylabel("p99 latency (s)")
    ax.set_title(f"{report['machine']['cpu']}, {report['machine']['cores']} cores")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--repo",
        type=Path,
        default=ROOT / Settings.from_env().model_dir,
        help="model repository (default: the model_dir setting, relative to the project root)",
    )
    p.add_argument("--users", default="1,2,4,8,16,32")
    p.add_argument("--overload-users", type=int, default=100, help="0: no overload level")
    p.add_argument("--baseline-users", default="1,16")
    p.add_argument("--seconds", type=int, default=40, help="per concurrency level")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--query", default="heatmap=none")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="CHEXRAY_X=V",
        help="server setting for this run (repeatable)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()

    started = time.monotonic()
    if not (args.repo / "manifest.json").is_file():
        subprocess.run(
            [PY, "-m", "chexray.cli", "convert", "--preset", "default", "--out", str(args.repo)],
            check=True,
        )
    images = ROOT / "bench" / ".cache" / "images"
    sources = write_images(images, args.images)
    height, width = check_contract(load_manifest(args.repo))
    workdir = Path(tempfile.mkdtemp(prefix="chexray-bench-"))
    model_size = workdir / f"images-{height}x{width}"
    write_model_size_images(sources, model_size, (height, width))
    server_env = {"CHEXRAY_INTRA_OP_THREADS": str(args.threads)}
    server_env.update(dict(s.split("=", 1) for s in args.set))

    print("1/4 engine limit, first half", flush=True)
    before = run_engine(args.repo, workdir, 4, args.threads, "before")
    print("2/4 server under load, the engine measured again around each level", flush=True)
    check = Checkpoint(args.repo, args.threads, before["rows"])
    server = run_server(
        args.repo,
        images,
        workdir,
        [int(u) for u in args.users.split(",")],
        args.seconds,
        args.query,
        server_env,
        overload_users=args.overload_users,
        checkpoint=check,
        model_size_images=model_size,
    )
    server["model_input"] = f"{width}x{height}"
    check.close()
    print("3/4 engine limit, second half", flush=True)
    engine = bracketed(before, run_engine(args.repo, workdir, 4, args.threads, "after"))
    baseline = None
    if not args.no_baseline:
        print("4/4 legacy architecture", flush=True)
        baseline = run_baseline(
            images, workdir, [int(u) for u in args.baseline_users.split(",")], args.seconds
        )
    report = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "engine": engine,
        "server": server,
        "baseline": baseline,
        "seconds": args.seconds,
        "duration_s": time.monotonic() - started,
    }
    report["ratios"] = ratios(report)

    name = re.sub(r"[^a-z0-9]+", "-", f"{report['machine']['cpu']}-{os.cpu_count()}core".lower())
    stem = args.out / f"{name.strip('-')}-{report['date']}"
    if stem.with_suffix(".json").exists():  # a second run that day keeps the first report
        stem = stem.with_name(f"{stem.name}-{dt.datetime.now():%H%M}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nreport: {stem}.md / .json / .png ({report['duration_s'] / 60:.1f} min)")
    for key, value in report["ratios"].items():
        label, target = TARGETS[key]
        print(f"{label}: {value:.2f} (target {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
