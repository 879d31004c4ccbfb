"""Decoding and drawing threads run below the engine's priority (server/runtime/threads)."""

import os
import sys
import threading

import pytest

from server.runtime.threads import MAX_NICE, named_pool, side_pool, side_threads, usable_cpus
from server.settings import Settings, SettingsError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux thread nice")


def _nice_of_pool_thread(nice: int) -> tuple[int, int]:
    """(the creating thread's nice, a pool thread's nice)."""
    pool = side_pool(1, "test-side", nice)
    try:
        theirs = pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), theirs.result(10)
    finally:
        pool.shutdown()


def test_pool_threads_run_the_given_steps_below_their_creator() -> None:
    mine, theirs = _nice_of_pool_thread(5)
    assert theirs == min(MAX_NICE, mine + 5)


def test_the_creating_thread_keeps_its_priority() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    _nice_of_pool_thread(10)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_zero_leaves_the_priority_alone() -> None:
    mine, theirs = _nice_of_pool_thread(0)
    assert theirs == mine


def test_the_nice_setting_is_bounded() -> None:
    assert Settings().side_work_nice == 10
    with pytest.raises(SettingsError, match="SIDE_WORK_NICE"):
        Settings(side_work_nice=20)
    with pytest.raises(SettingsError, match="SIDE_WORK_NICE"):
        Settings(side_work_nice=-1)


def _native_name(pool) -> str:
    tid = pool.submit(threading.get_native_id).result(10)
    return open(f"/proc/self/task/{tid}/comm").read().strip()


def test_pool_threads_carry_their_names_to_the_system() -> None:
    side, run = side_pool(1, "chexray-cpu", 0), named_pool(1, "chexray-run-with-a-long-name")
    try:
        assert _native_name(side) == "chexray-cpu_0"
        assert _native_name(run) == "chexray-run-wit"  # the system keeps 15 bytes
    finally:
        side.shutdown()
        run.shutdown()


def test_side_threads_follow_where_the_engine_computes() -> None:
    assert side_threads(3, engine_on_gpu=True, cpus=16) == 3  # set: taken as it is
    # On the CPU the engine takes the cores itself: two, whatever the machine.
    assert side_threads(0, engine_on_gpu=False, cpus=2) == 2
    assert side_threads(0, engine_on_gpu=False, cpus=64) == 2
    # On a GPU the cores are the side work's: half of them, 2 to 8.
    assert side_threads(0, engine_on_gpu=True, cpus=2) == 2
    assert side_threads(0, engine_on_gpu=True, cpus=12) == 6
    assert side_threads(0, engine_on_gpu=True, cpus=128) == 8
    # Counted from the CPUs this process may use.
    assert side_threads(0, engine_on_gpu=True) == max(2, min(8, usable_cpus() // 2))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", None),  # no quota: the CPUs it may run on
        ("150000 100000\n", 2),  # docker --cpus 1.5: rounded up
        ("50000 100000\n", 1),
        ("garbled\n", None),
        (None, None),  # cgroup v1 or no CPU controller: no file
    ],
)
def test_usable_cpus_follow_a_cgroup_cpu_quota(tmp_path, cpu_max, expected) -> None:
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (affinity if expected is None else min(affinity, expected))


def test_decode_threads_take_zero_for_auto_and_refuse_negatives() -> None:
    assert Settings().decode_threads == 0
    with pytest.raises(SettingsError, match="DECODE_THREADS"):
        Settings(decode_threads=-1)
