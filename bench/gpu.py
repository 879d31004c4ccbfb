"""GPU benchmark in one command: engine limit on CUDA fp32 and fp16, the server under load,
peak device memory, and the report.

    make bench-gpu                  # .venv-gpu with .[gpu,bench,bench-gpu]; reuses models_onnx
                                    # (builds it only when missing), then runs this script
    python bench/gpu.py [--repo models_onnx] [--out bench/results]
    python bench/gpu.py --device cpu --quick --repo DIR --out DIR   # the CPU path: every phase
                                    # with the CPU provider and tiny durations, no GPU needed

Phases, each timed (`make bench-gpu` adds the venv and repository phases before them):
1. precision check: the served choice (onnxruntime-cuda-fp16) against onnxruntime fp32, as
   the server would run it at start; recorded in the manifest (`chexray models
   check-precision` does the same) so the server starts without it. Skipped when recorded.
2. engine limit (bench/gpu_engine.py), one child process per precision: fp32 and fp16 with
   IO binding, batch sizes 1..64, 1 and 2 instances (two sessions run concurrently from two
   threads), and the device memory each instance count took; each session gets 90 % of
   the arena a server session will get (ENGINE_ARENA_SHARE), so the chosen batch fits
   there with a margin.
3. server: a real `chexray serve` (CHEXRAY_PROVIDER=cuda, fp16 or `--serve fp32`) under
   Locust at 1, 4, 16 and 64 clients posting 1024x1024 PNGs, with settings chosen from
   phase 2's figures (instances, max batch); then the same images already at the model's
   input size at the most clients, which leaves almost no decoding to the CPU: whether
   decoding is what holds the server below the engine; peak device memory sampled
   throughout (bench/devmem.py).
4. bench/results/<gpu>-<date>.{json,md,png}, and the three GPU ratios printed last:
   server saturation / fp16 engine limit (>= 0.9); server p50 at 1 client / fp16 batch-1
   latency (<= 1.2); server peak device memory / CHEXRAY_GPU_MEM_LIMIT (<= 1).

Durations are chosen so the whole stays under 8 minutes on one GPU and 16 cores, the venv
install included; the default model build (TensorFlow, torch) is not counted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.devmem import DeviceMemory, gpu_info  # noqa: E402
from bench.engine import cpu_model  # noqa: E402
from bench.gpu_engine import BATCH_SIZES, measure_precision  # noqa: E402
from bench.images import write_images, write_model_size_images  # noqa: E402
from bench.portable_repo import redrawn  # noqa: E402
from bench.run import cpu_table, run_server  # noqa: E402
from server.runtime.contract import check_contract  # noqa: E402
from server.runtime.manifest import load_manifest  # noqa: E402
from server.settings import Settings  # noqa: E402

GIB = 1024**3
# The engine's sessions get this share of the arena each server session will get, so a
# batch size chosen from the engine's figures keeps a margin in the server: on an H100 a
# batch that just fit the engine missed the server's warm-up by 0.4 MB (2026-11-26).
ENGINE_ARENA_SHARE = 0.9
BUDGET_TOTAL_S = 8 * 60

RATIOS = {
    "server_saturation_over_engine_limit": (
        "server throughput at saturation / {p} engine limit",
        ">=",
        0.9,
    ),
    "server_p50_1_client_over_engine_batch_1": (
        "server p50 at 1 client / {p} batch-1 latency (1 instance)",
        "<=",
        1.2,
    ),
    "peak_device_memory_over_limit": (
        "server peak device memory / CHEXRAY_GPU_MEM_LIMIT",
        "<=",
        1.0,
    ),
    # No target: beside the first ratio, it says whether decoding on the CPU is what holds
    # the server below the engine (bench/run.py has the same level).
    "model_size_saturation_over_engine_limit": (
        "server throughput, uploads at the model's input size (almost no decoding) / {p} "
        "engine limit",
        None,
        None,
    ),
}


class Phases:
    """Wall time of each phase, printed as it ends."""

    def __init__(self, before: dict[str, float]) -> None:
        self.seconds = dict(before)
        self._started = time.monotonic()

    def run(self, name: str, fn, *args, **kwargs):
        print(f"[phase] {name} ...", flush=True)
        t = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[name] = time.monotonic() - t
            print(f"[phase] {name}: {self.seconds[name]:.1f} s", flush=True)

    @property
    def total(self) -> float:
        before = sum(v for k, v in self.seconds.items() if k in ("venv", "repository"))
        return before + time.monotonic() - self._started


# -- phases that need a process of their own ----------------------------------------------


def _in_child(fn, *args, **kwargs):
    """Run fn in a fresh (spawned) process: its CUDA context and arenas are freed when it
    ends, so the next phase's device memory starts from an idle GPU; a crash there (the
    driver aborting on a fault) is an error here, not the end of the benchmark."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def precision_check(repo: Path, device: str, precision: str, gpu_mem_limit: int) -> dict:
    """The served choice's check against onnxruntime fp32, run and recorded if missing."""
    import msgspec

    from server.runtime.backends import Choice
    from server.runtime.manifest import load_manifest
    from server.runtime.precision import record, run_check

    choice = Choice("onnxruntime", device, precision)  # type: ignore[arg-type]
    if choice.is_reference:
        return {"label": choice.label, "status": "not needed: the fp32 reference itself"}
    manifest = load_manifest(repo)
    found = manifest.precision_checks.get(choice.label)
    if found is not None:
        return {**msgspec.to_builtins(found), "status": "already recorded"}
    with tempfile.TemporaryDirectory(prefix="chexray-gpu-check-") as tmp:
        settings = Settings(
            model_dir=repo,
            data_dir=Path(tmp),
            provider=device,
            gpu_mem_limit=gpu_mem_limit,
            optimized_cache=False,  # a one-off CPU session: not worth caching its graph
        )
        check = run_check(choice, manifest, repo, settings)
    record(repo, manifest, [check])
    return {**msgspec.to_builtins(check), "status": "run and recorded now"}


# -- server settings from the engine's figures ---------------------------------------------


def engine_arena(arenas: int, instances: int) -> int:
    """gpu_mem_limit of one engine-phase session when the server splits `arenas`."""
    return int(ENGINE_ARENA_SHARE * arenas) // instances


def served_label(device: str, precision: str | None = None) -> str:
    """What the server serves: fp16 on CUDA unless asked otherwise; on the CPU path fp32
    (the server refuses fp16 on a CPU, where onnxruntime's fp16 kernels are slower)."""
    if device != "cuda":
        precision = "fp32"
    return f"onnxruntime-{device}-{precision or 'fp16'}"


def ok_rows(rows: list[dict], config: str, instances: int | None = None) -> list[dict]:
    return [
        r
        for r in rows
        if r["config"] == config
        and "error" not in r
        and (instances is None or r["instances"] == instances)
    ]


def engine_limit(rows: list[dict], config: str) -> dict | None:
    found = ok_rows(rows, config)
    return max(found, key=lambda r: r["images_per_s"]) if found else None


def server_settings(
    rows: list[dict],
    label: str,
    device: str,
    budget: int,
    reserve: int,
    max_users: int,
    cores: int,
) -> tuple[dict[str, str], list[str]]:
    """Environment for `chexray serve` and why each value: instances = 2 where two
    sessions beat one by 10 %; max batch = the smallest batch reaching 95 % of that count's
    best images/s; no wait (an idle engine starts at once; batches form from what queues
    while the instances run: the 1-client latency target needs that); the device budget
    split between the instances' arenas after a reserve for the CUDA context."""
    best = {
        i: max(ok_rows(rows, label, i), key=lambda r: r["images_per_s"])
        for i in (1, 2)
        if ok_rows(rows, label, i)
    }
    if not best:
        raise SystemExit(f"no engine figures for {label}: cannot choose the server's settings")
    instances = (
        2
        if 2 in best and (1 not in best or best[2]["images_per_s"] >= 1.1 * best[1]["images_per_s"])
        else 1
    )
    top = best[instances]["images_per_s"]
    max_batch = min(
        r["batch"] for r in ok_rows(rows, label, instances) if r["images_per_s"] >= 0.95 * top
    )
    warmup = sorted({b for b in BATCH_SIZES if b <= max_batch} | {max_batch})
    env = {
        "CHEXRAY_PROVIDER": device,
        "CHEXRAY_BACKEND": "onnxruntime",
        "CHEXRAY_PRECISION": label.rsplit("-", 1)[1],
        "CHEXRAY_INSTANCES": str(instances),
        "CHEXRAY_MAX_BATCH": str(max_batch),
        "CHEXRAY_MAX_WAIT_MS": "0",
        "CHEXRAY_MAX_QUEUE": str(max(256, 4 * max_users)),
        "CHEXRAY_WARMUP_BATCH_SIZES": ",".join(map(str, warmup)),
    }
    why = [
        f"instances {instances}: best {label} x1 {best.get(1, {}).get('images_per_s', 0):.1f}"
        f" vs x2 {best.get(2, {}).get('images_per_s', 0):.1f} images/s",
        f"max batch {max_batch}: smallest reaching 95 % of {top:.1f} images/s",
    ]
    if device == "cuda":
        # The server splits CHEXRAY_GPU_MEM_LIMIT between its instances' arenas; the
        # engine phase measured each session under ENGINE_ARENA_SHARE of that share.
        arenas = budget - reserve
        env["CHEXRAY_GPU_MEM_LIMIT"] = str(arenas)
        why.append(
            f"CHEXRAY_GPU_MEM_LIMIT {arenas / GIB:.2f} GiB for the arenas ({budget / GIB:.2f} "
            f"GiB budget - {reserve / GIB:.2f} GiB for the CUDA context), "
            f"{arenas / instances / GIB:.2f} GiB per session"
        )
    else:
        env["CHEXRAY_INTRA_OP_THREADS"] = str(max(1, cores // instances))
    return env, why


# -- ratios and the report -------------------------------------------------------------------


def ratios(report: dict) -> dict:
    rows = report["engine"]["rows"]
    label = report["served"]
    limit = engine_limit(rows, label)
    b1 = next((r for r in ok_rows(rows, label, 1) if r["batch"] == 1), None)
    levels = report["server"]["levels"]
    saturation = max(x["images_per_s"] for x in levels)
    p50_1 = next((x["p50_ms"] for x in levels if x["users"] == 1), None)
    peak = report["server"]["device_memory"]["peak_mb"]
    model_size = report["server"].get("model_size")
    values = {
        "server_saturation_over_engine_limit": (
            saturation / limit["images_per_s"] if limit else None
        ),
        "server_p50_1_client_over_engine_batch_1": (
            p50_1 / b1["median_ms"] if b1 and p50_1 is not None else None
        ),
        "peak_device_memory_over_limit": (
            peak * 1024**2 / report["gpu_mem_budget"] if peak is not None else None
        ),
        "model_size_saturation_over_engine_limit": (
            model_size["images_per_s"] / limit["images_per_s"] if limit and model_size else None
        ),
    }
    precision = label.rsplit("-", 1)[1]
    out = {}
    for key, value in values.items():
        text, op, target = RATIOS[key]
        judged = op is not None and value is not None
        met = (value >= target if op == ">=" else value <= target) if judged else None
        out[key] = {
            "label": text.format(p=precision),
            "value": value,
            "target": f"{op} {target}" if op else "none: what decoding costs",
            "met": met,
        }
    return out


def engine_table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys((r["config"], r["instances"]) for r in rows))
    batches = sorted({r["batch"] for r in rows})
    lines = [
        "| configuration | instances | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|---|" + "---|" * len(batches),
    ]
    for config, inst in keys:
        cells = []
        for b in batches:
            r = next(
                (x for x in rows if (x["config"], x["instances"], x["batch"]) == (config, inst, b)),
                None,
            )
            if r is None:
                cells.append("")
            elif "error" in r:
                cells.append("failed")
            else:
                cells.append(f"{r['median_ms']:.1f} ms ({r['images_per_s']:.0f}/s)")
        lines.append(f"| {config} | {inst} | " + " | ".join(cells) + " |")
    return lines


def model_size_line(server: dict) -> list[str]:
    """The level posting images at the model's input size, in words."""
    x = server.get("model_size")
    if not x:
        return []
    return [
        f"With the same images already at the model's input size ({server['model_input']}, "
        f"almost no decoding) at {x['users']} clients: {x['images_per_s']:.1f} images/s, p50 "
        f"{x['p50_ms']:.0f} ms, mean batch {x['mean_batch']:.1f}. Set beside the level above "
        "at the same clients, it shows whether decoding on the CPU holds the server back.",
        "",
    ]


def _mb(v: float | None) -> str:
    return "not measured" if v is None else f"{v:.0f} MB"


def markdown(report: dict) -> str:
    m, s = report["machine"], report["server"]
    gpu = m.get("gpu") or {}
    where = (
        f"{gpu['gpu']} (driver {gpu['driver']}, CUDA {gpu['cuda_driver']}, "
        f"{gpu['memory_total_mb'] / 1024:.0f} GiB)"
        if gpu
        else "no GPU: the CPU path (CPU provider, tiny durations)"
    )
    budget_gb = report["gpu_mem_budget"] / GIB
    lines = [
        f"# CheXray GPU benchmark, {report['date']}",
        "",
        f"{where}; {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']} "
        f"({', '.join(m['providers'])}); model {s['model_version']}; 1024x1024 PNG uploads; "
        f"query `{s['query']}`; {report['seconds']} s per level; total run "
        f"{report['duration_s'] / 60:.1f} min"
        + (" (quick: durations too short for figures to mean anything)" if report["quick"] else "")
        + ".",
        "",
        *(
            [
                f"Model repository unpacked from a pack of `{redrawn_from['from_version']}` "
                f"(bench/portable_repo.py): the same graphs, {redrawn_from['redrawn_tensors']} "
                "large weight tensors redrawn with their shapes, dtypes and scales, so speed and "
                "memory are the built repository's and the outputs are not.",
                "",
            ]
            if (redrawn_from := report.get("redrawn"))
            else []
        ),
        "## Phases",
        "",
        "| phase | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in report["phases"].items()],
        "",
        "## Precision check of the served choice",
        "",
        "```",
        json.dumps(report["precision_check"], indent=1)[:1500],
        "```",
        "",
        "## Engine limit (fused graph alone, IO binding), median ms per batch (images/s)",
        "",
        f"Input copied to the device once per measurement; outputs bound to "
        f"{report['engine']['outputs']}. Instances 2: two sessions run concurrently from two "
        "threads, images/s over both.",
        "",
        *engine_table(report["engine"]["rows"]),
        "",
        "Device memory above idle, peak per precision and instance count (the CUDA context "
        "included):",
        "",
        "| precision | instances | peak device memory |",
        "|---|---|---|",
    ]
    for precision, result in report["engine"]["by_precision"].items():
        memory = result.get("device_memory") or {}
        segments = memory.get("segments_mb") or {}
        if not segments:
            lines.append(f"| {precision} | 1, 2 | not measured |")
        for segment, peak in segments.items():
            lines.append(f"| {precision} | {segment.split()[0]} | {_mb(peak)} |")
    lines += [
        "",
        f"## Server under load (Locust), served by {s['backend']} ({s['provider']})",
        "",
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in s["settings"].items()) + ".",
        "",
        *[f"- {w}" for w in report["settings_why"]],
        "",
        "| clients | images/s | p50 ms | p95 ms | p99 ms | failures | mean batch | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {x['users']} | {x['images_per_s']:.1f} | {x['p50_ms']:.0f} | {x['p95_ms']:.0f} "
            f"| {x['p99_ms']:.0f} | {x['failures']}/{x['requests']} | {x['mean_batch']:.1f} | "
            f"{x['rss_mb']:.0f} |"
            for x in s["levels"]
        ],
        "",
        *model_size_line(s),
        f"Server peak device memory above idle: {_mb(s['device_memory']['peak_mb'])} "
        f"(budget CHEXRAY_GPU_MEM_LIMIT {budget_gb:.2f} GiB); peak RSS "
        f"{s['rss_peak_mb']:.0f} MB.",
        "",
        *cpu_table([*s["levels"], *filter(None, [s.get("model_size")])]),
        "",
        "## Ratios",
        "",
        "| ratio | measured | target | met |",
        "|---|---|---|---|",
    ]
    for r in report["ratios"].values():
        value = "not measured" if r["value"] is None else f"{r['value']:.2f}"
        met = "—" if r["met"] is None else ("yes" if r["met"] else "no")
        lines.append(f"| {r['label']} | {value} | {r['target']} | {met} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    rows = report["engine"]["rows"]
    for config, inst in dict.fromkeys((r["config"], r["instances"]) for r in rows):
        ok = ok_rows(rows, config, inst)
        left.plot(
            [r["batch"] for r in ok],
            [r["images_per_s"] for r in ok],
            "o-" if inst == 1 else "s--",
            label=f"{config.rsplit('-', 1)[1]} x{inst}",
        )
    left.set_xscale("log", base=2)
    batches = sorted({r["batch"] for r in rows})
    left.set_xticks(batches, [str(b) for b in batches])
    left.set_xlabel("batch size")
    left.set_ylabel("engine images/s")
    left.set_title("engine limit (IO binding)")
    left.grid(alpha=0.3)
    left.legend()

    levels = report["server"]["levels"]
    xs = [x["images_per_s"] for x in levels]
    for key, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
        right.plot(xs, [x[key] for x in levels], style, label=f"server {key[:3]}")
    for x, y, level in zip(xs, [v["p99_ms"] for v in levels], levels, strict=True):
        right.annotate(
            str(level["users"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    limit = engine_limit(rows, report["served"])
    if limit:
        right.axvline(
            limit["images_per_s"],
            color="grey",
            linestyle=":",
            label=f"engine limit {limit['images_per_s']:.0f}/s",
        )
    right.set_xlabel("throughput (images/s); labels: clients")
    right.set_ylabel("latency (ms)")
    right.set_title(f"server, {report['served']}")
    right.grid(alpha=0.3)
    right.legend()
    gpu = report["machine"].get("gpu")
    fig.suptitle(gpu["gpu"] if gpu else f"CPU path: {report['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path)


def machine(device: str, device_id: int) -> dict:
    import onnxruntime as ort

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "platform": platform.platform(),
        "gpu": gpu_info(device_id) if device == "cuda" else None,
    }


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny durations and sizes: tests the script, measures nothing worth keeping",
    )
    p.add_argument("--repo", type=Path, default=None, help="default: the model_dir setting")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--users", help="clients per level (default 1,4,16,64; quick 1,4)")
    p.add_argument("--seconds", type=int, help="per level (default 20; quick 2)")
    p.add_argument("--batch-sizes", help="engine (default 1,2,4,...,64; quick 1,2,4)")
    p.add_argument("--engine-seconds", type=float, help="per measurement (default 0.7)")
    p.add_argument("--outputs", choices=["cpu", "device"], default="cpu")
    p.add_argument(
        "--serve",
        choices=["fp16", "fp32"],
        default="fp16",
        help="the precision the server serves on CUDA (the CPU path serves fp32)",
    )
    p.add_argument(
        "--engine-precisions",
        default="fp32,fp16",
        help="precisions whose engine limit is measured (the served one is always among them)",
    )
    p.add_argument("--images", type=int, help="distinct PNGs posted (default 16; quick 4)")
    p.add_argument("--images-dir", type=Path, default=ROOT / "bench" / ".cache" / "images")
    p.add_argument("--query", default="heatmap=none")
    p.add_argument(
        "--locust-processes", type=int, help="load generators (default: cores/4, at most 4)"
    )
    p.add_argument(
        "--context-reserve-mb",
        type=int,
        default=1024,
        help="device memory kept outside the arenas' limits (CUDA context, cuDNN, cuBLAS)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="CHEXRAY_X=V",
        help="server setting over the chosen ones (repeatable)",
    )
    p.add_argument(
        "--phase-time",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="a phase timed before this script (make bench-gpu: venv, repository)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.users = [int(u) for u in (args.users or ("1,4" if quick else "1,4,16,64")).split(",")]
    args.seconds = args.seconds or (2 if quick else 20)
    sizes = args.batch_sizes or ("1,2,4" if quick else ",".join(map(str, BATCH_SIZES)))
    args.batch_sizes = tuple(int(b) for b in sizes.split(","))
    args.engine_seconds = args.engine_seconds or (0.05 if quick else 0.7)
    args.images = args.images or (4 if quick else 16)
    served = served_label(args.device, args.serve).rsplit("-", 1)[1]
    wanted = set(args.engine_precisions.split(",")) | {served}
    args.engine_precisions = [p for p in ("fp32", "fp16") if p in wanted]
    cores = os.cpu_count() or 2
    if args.locust_processes is None:
        args.locust_processes = 1 if args.device == "cpu" else max(1, min(4, cores // 4))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_env()
    repo = (args.repo or ROOT / settings.model_dir).resolve()
    budget = settings.gpu_mem_limit  # CHEXRAY_GPU_MEM_LIMIT: the device budget, all told
    cores = os.cpu_count() or 2
    phases = Phases({k: float(v) for k, v in (s.split("=", 1) for s in args.phase_time)})
    if not (repo / "manifest.json").is_file():
        raise SystemExit(
            f"no model repository in {repo}: `make bench-gpu` builds the default one, or "
            f"`chexray convert --preset default --out {repo}` (needs the convert extra)"
        )
    if args.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SystemExit(
                f"onnxruntime {ort.__version__} has no CUDA provider here "
                f"({ort.get_available_providers()}): install the gpu extra (onnxruntime-gpu, "
                "never beside onnxruntime), check the CUDA and cuDNN libraries, or run the "
                "CPU path with --device cpu"
            )
    label = served_label(args.device, args.serve)
    precision = label.rsplit("-", 1)[1]
    arenas = budget - args.context_reserve_mb * 1024**2  # the server's arenas, all told
    print(
        f"{'GPU' if args.device == 'cuda' else 'CPU path'} benchmark of {repo}; serving {label}; "
        f"device budget {budget / GIB:.2f} GiB",
        flush=True,
    )

    check = phases.run(
        "precision check", _in_child, precision_check, repo, args.device, precision, budget
    )
    print(f"  {check.get('label')}: {check['status']}", flush=True)

    def engine() -> dict:
        by_precision = {}
        for p in args.engine_precisions:
            try:
                by_precision[p] = _in_child(
                    measure_precision,
                    repo,
                    p,
                    args.device,
                    args.batch_sizes,
                    args.engine_seconds,
                    2 if args.quick else 3,
                    (1, 2),
                    args.outputs,
                    # each of two sessions gets half, as the server's would, less a margin
                    gpu_mem_limit=engine_arena(arenas, 2),
                    device_id=settings.device_id,
                    threads=max(1, cores // 2) if args.device == "cpu" else 0,
                )
            except Exception as exc:  # the child crashed, or CUDA could not be used
                print(f"  engine {p}: failed: {exc}", flush=True)
                by_precision[p] = {"rows": [], "error": str(exc), "device_memory": None}
        rows = [r for result in by_precision.values() for r in result["rows"]]
        return {"by_precision": by_precision, "rows": rows, "outputs": args.outputs}

    engine_result = phases.run("engine", engine)

    env, why = server_settings(
        engine_result["rows"],
        label,
        args.device,
        budget,
        args.context_reserve_mb * 1024**2,
        max(args.users),
        cores,
    )
    env.update(dict(s.split("=", 1) for s in args.set))
    workdir = Path(tempfile.mkdtemp(prefix="chexray-gpu-bench-"))
    images = workdir / "images"  # the count asked for, whatever else the cache holds
    images.mkdir()
    for path in write_images(args.images_dir, args.images):
        shutil.copy(path, images)
    height, width = check_contract(load_manifest(repo))
    model_size = workdir / f"images-{height}x{width}"
    write_model_size_images(sorted(images.iterdir()), model_size, (height, width))
    print("  server settings: " + " ".join(f"{k}={v}" for k, v in env.items()), flush=True)

    def server() -> dict:
        memory = DeviceMemory(settings.device_id, enabled=args.device == "cuda").start()
        try:
            result = run_server(
                repo,
                images,
                workdir,
                args.users,
                args.seconds,
                args.query,
                env,
                args.locust_processes,
                model_size_images=model_size,
            )
        finally:
            result_memory = memory.stop()
        result["device_memory"] = result_memory
        result["model_input"] = f"{width}x{height}"
        result["locust_processes"] = args.locust_processes
        return result

    server_result = phases.run("server", server)
    if args.device == "cuda" and not server_result["provider"].startswith("CUDA"):
        print(
            f"  WARNING: the server ran on {server_result['provider']}, not CUDA: onnxruntime "
            "fell back to the CPU (CUDA or cuDNN libraries not found?)",
            flush=True,
        )
    print(f"  server peak device memory: {_mb(server_result['device_memory']['peak_mb'])}")

    report = {
        "date": dt.date.today().isoformat(),
        "device": args.device,
        "quick": args.quick,
        "machine": machine(args.device, settings.device_id),
        "gpu_mem_budget": budget,
        "served": label,
        "redrawn": redrawn(repo),
        "precision_check": check,
        "engine": engine_result,
        "server": server_result,
        "settings_why": why,
        "seconds": args.seconds,
    }
    report["ratios"] = ratios(report)
    gpu = report["machine"]["gpu"]
    name = slug(gpu["gpu"]) if gpu else f"cpu-path-{slug(report['machine']['cpu'])}"
    stem = args.out / f"{name}-{report['date']}"
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        report["phases"] = dict(phases.seconds)  # this phase's own time: in the JSON
        report["duration_s"] = phases.total
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
        stem.with_suffix(".md").write_text(markdown(report))
        plot(report, stem.with_suffix(".png"))

    phases.run("report", write)
    report["phases"]["report"] = phases.seconds["report"]
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nreport: {stem}.md / .json / .png")
    print("phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.seconds.items()))
    total = phases.total
    print(
        f"total {total / 60:.1f} min"
        + (f" (over the {BUDGET_TOTAL_S // 60}-minute budget)" if total > BUDGET_TOTAL_S else "")
    )
    for r in report["ratios"].values():
        value = "not measured" if r["value"] is None else f"{r['value']:.2f}"
        met = "" if r["met"] is None else (" met" if r["met"] else " MISSED")
        print(f"{r['label']}: {value} (target {r['target']}){met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
