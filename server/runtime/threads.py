"""Thread pools for the CPU work beside the engine: decoding, resizing, drawing heatmaps.

Their threads run at a lower scheduling priority (a higher nice value) than the engine's.
The engine's threads work on each batch in lockstep, so one of them pre-empted by a decode
stalls them all; at a lower priority the side work runs in the engine's gaps and yields the
core when a batch needs it. Measured on 2 cores at saturation: about 5% more images/s. On an
idle server nothing changes: nobody competes. Linux only (elsewhere the pools run as they
are); lowering one's own priority needs no privilege.

The server's threads also carry their names where the system shows them (`top -H`, `ps -T`,
/proc/<pid>/task/<tid>/comm): which thread spends the CPU is then known from outside, as the
benchmark's CPU breakdown reads it.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("chexray.runtime")

MAX_NICE = 19
PR_SET_NAME = 15  # prctl option: name the calling thread
# Side threads where the engine computes on the CPU: it takes every core itself, and the
# side work runs in its gaps (see above); 2 keeps one upload decoding while another waits.
CPU_ENGINE_SIDE_THREADS = 2
# Where it computes on a GPU the cores are free for the side work, and the engine wants a
# lot of it: decoding a 1024x1024 PNG costs 7.4-7.6 ms of CPU (bench/results), the fp16
# engine on an H100 takes about 1000 images/s, 7 to 8 cores of decoding. Half the CPUs
# leaves the rest to the event loop, the engine's feeders and the system.
GPU_ENGINE_SIDE_THREADS = (2, 8)


def side_threads(setting: int, engine_on_gpu: bool, cpus: int | None = None) -> int:
    """How many threads each side pool gets: `setting` where it is set (> 0); else 2 where
    the engine computes on the CPU, half the `cpus` this process may use (2 to 8) where it
    computes on a GPU."""
    if setting > 0:
        return setting
    if not engine_on_gpu:
        return CPU_ENGINE_SIDE_THREADS
    low, high = GPU_ENGINE_SIDE_THREADS
    return max(low, min(high, (cpus or usable_cpus()) // 2))


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may run on (a container's cpuset, not the host's), fewer where
    a CPU quota caps them (cgroup v2 `cpu.max`: `docker --cpus`, a Kubernetes CPU limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # cgroup v1, or no CPU controller here: no quota known
        pass
    return cpus


def side_pool(threads: int, name: str, nice: int) -> ThreadPoolExecutor:
    """A pool of `threads` whose threads run `nice` steps below the thread that creates
    them (0: at the same priority)."""
    return ThreadPoolExecutor(
        threads, thread_name_prefix=name, initializer=_start_side_thread, initargs=(nice,)
    )


def named_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A pool whose threads carry their names to the system, at the usual priority."""
    return ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=name_native_thread)


def name_native_thread() -> None:
    """Give the calling thread's Python name to the system (Linux keeps 15 bytes of it)."""
    if not sys.platform.startswith("linux"):
        return
    name = threading.current_thread().name.encode()[:15]
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError) as exc:  # no prctl to be found: the name stays
        log.debug("could not name thread %s: %s", threading.current_thread().name, exc)


def _start_side_thread(nice: int) -> None:
    name_native_thread()
    _lower_priority(nice)


def _lower_priority(nice: int) -> None:
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    # On Linux a thread id names one thread for setpriority, not the whole process.
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, current + nice))
    except OSError as exc:  # a sandbox that forbids it: run at the usual priority
        log.debug("could not lower the priority of %s: %s", threading.current_thread().name, exc)
