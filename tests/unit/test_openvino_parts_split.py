"""How many parts OpenVINO runs side by side, on how many threads each, and how the
networks are spread over them (server/runtime/openvino_backend.py, branches.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.runtime.openvino_backend import available_threads, parts_for, thread_shares


def test_two_parts_where_there_are_two_threads_unless_told() -> None:
    assert parts_for(0, 1) == 1
    assert parts_for(0, 2) == 2
    assert parts_for(0, 16) == 2
    assert parts_for(1, 16) == 1  # the graph whole
    assert parts_for(3, 16) == 3
    assert parts_for(4, 2) == 2  # never more parts than threads


@pytest.mark.parametrize(
    ("threads", "parts", "shares"),
    [(2, 2, [1, 1]), (5, 2, [3, 2]), (16, 3, [6, 5, 5]), (3, 1, [3])],
)
def test_threads_are_shared_evenly(threads: int, parts: int, shares: list[int]) -> None:
    assert thread_shares(threads, parts) == shares
    assert sum(shares) == threads


def test_networks_go_longest_first_to_the_lightest_part() -> None:
    pytest.importorskip("openvino")
    from server.runtime.branches import _balance

    networks = [(["a"], 7), (["b"], 5), (["c"], 4), (["d"], 3), (["e"], 3), (["f"], 2)]
    assert _balance(networks, 2) == [(["a", "d", "f"], 12), (["b", "c", "e"], 12)]
    assert _balance(networks, 3) == [(["a", "f"], 9), (["b", "e"], 8), (["c", "d"], 7)]
    assert _balance(networks, 1) == [(["a", "b", "c", "d", "e", "f"], 24)]


def _topology(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    for cpu, (package, core) in cores.items():
        where = root / f"cpu{cpu}" / "topology"
        where.mkdir(parents=True)
        (where / "physical_package_id").write_text(f"{package}\n")
        (where / "core_id").write_text(f"{core}\n")
    return root


def test_threads_count_physical_cores_not_their_hardware_threads(tmp_path: Path) -> None:
    # Two cores with two hardware threads each, on one package; and two packages.
    smt = _topology(tmp_path / "smt", {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)})
    assert available_threads({0, 1, 2, 3}, smt) == 2
    assert available_threads({0, 2}, smt) == 1  # a cpuset of one core's two threads
    two = _topology(tmp_path / "two", {0: (0, 0), 1: (1, 0)})
    assert available_threads({0, 1}, two) == 2
    assert available_threads({0, 1, 2}, tmp_path / "none") == 3  # no topology: the CPUs
