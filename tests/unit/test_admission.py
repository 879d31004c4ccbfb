"""Admission by deadline: who is let in, who is refused, and what Retry-After says."""

from __future__ import annotations

import pytest

from server.runtime.admission import Admission, Overloaded


def admission(budget_s: float = 1.0, max_in_flight: int = 100, capacity: int = 4) -> Admission:
    # A batch of n takes 0.1 s plus 0.05 s per image: batches amortise, as real ones do.
    return Admission(
        budget_s=budget_s,
        max_in_flight=max_in_flight,
        batch_capacity=capacity,
        batch_seconds=lambda n: 0.1 + 0.05 * n,
    )


def test_expected_wait_counts_full_batches_then_the_rest() -> None:
    a = admission()
    assert a.expected_wait(0) == 0
    assert a.expected_wait(3) == pytest.approx(0.25)  # one batch of 3
    assert a.expected_wait(4) == pytest.approx(0.3)  # one full batch
    assert a.expected_wait(10) == pytest.approx(2 * 0.3 + 0.2)  # two full, one of 2


def test_admits_until_the_expected_wait_passes_the_budget() -> None:
    a = admission(budget_s=1.0)
    held = []
    refused = None
    for _ in range(50):
        try:
            cm = a.admit()
            cm.__enter__()
            held.append(cm)
        except Overloaded as exc:
            refused = exc
            break
    # Its own batch counted: 11 ahead, done after 3 full batches = 0.9 s, fits; 12 ahead,
    # done after 0.9 + 0.15 s, does not.
    assert len(held) == 12 and a.in_flight == 12
    assert refused is not None and refused.code == "overloaded"
    assert "budget" in refused.message
    # Retry-After: when the 12 in flight should be done (0.9 s), in whole seconds.
    assert refused.retry_after == 1
    for cm in held:
        cm.__exit__(None, None, None)
    assert a.in_flight == 0
    with a.admit():
        assert a.in_flight == 1


def test_a_failed_analysis_gives_its_place_back() -> None:
    a = admission()
    with pytest.raises(ValueError), a.admit():
        raise ValueError("the decode failed")
    assert a.in_flight == 0


def test_retry_after_grows_with_the_queue() -> None:
    a = admission(budget_s=0.5, max_in_flight=1000)
    a.in_flight = 200  # 50 full batches: 15 s of work
    with pytest.raises(Overloaded) as info:
        a.check()
    # The 200 in flight: 50 full batches of 0.3 s.
    assert a.drain_time() == pytest.approx(15)
    assert info.value.retry_after in (15, 16)


def test_in_flight_cap_holds_even_when_batches_are_fast() -> None:
    a = Admission(budget_s=10, max_in_flight=3, batch_capacity=4, batch_seconds=lambda n: 0.001)
    a.in_flight = 3
    with pytest.raises(Overloaded, match="3 analyses are in progress"):
        a.check()


def test_draining_refuses_new_work_and_lets_admitted_work_finish() -> None:
    refused: list[str] = []
    a = Admission(
        budget_s=10,
        max_in_flight=10,
        batch_capacity=4,
        batch_seconds=lambda n: 0.1,
        on_refused=refused.append,
    )
    with a.admit():
        a.draining = True
        with pytest.raises(Overloaded) as info:
            a.check()
        assert a.in_flight == 1
    assert a.in_flight == 0
    assert info.value.code == "shutting_down" and info.value.retry_after >= 1
    assert refused == ["shutting_down"]


def test_several_analyses_are_admitted_whole_or_refused_whole() -> None:
    # Budget 1 s: 12 in flight, the request's own included, are done in 0.9 s; 13 are not.
    a = admission(budget_s=1.0)
    with a.admit(13):  # an idle server takes it whole
        assert a.in_flight == 13
        with pytest.raises(Overloaded, match="budget"):
            a.check()
    assert a.in_flight == 0
    a.in_flight = 10
    # 10 + 2 fits; 10 + 3 would not.
    with a.admit(2):
        assert a.in_flight == 12
    with pytest.raises(Overloaded) as info, a.admit(3):
        pass
    assert a.in_flight == 10, "a refused request holds no place"
    assert info.value.code == "overloaded" and info.value.retry_after >= 1


def test_a_count_of_one_is_the_single_analysis_rule() -> None:
    one, counted = admission(budget_s=1.0), admission(budget_s=1.0)
    for ahead in range(20):
        one.in_flight = counted.in_flight = ahead
        outcomes = []
        for check in (one.check, lambda: counted.check(1)):
            try:
                check()
                outcomes.append(None)
            except Overloaded as exc:
                outcomes.append((exc.message, exc.retry_after))
        assert outcomes[0] == outcomes[1], ahead


def test_a_request_over_the_in_flight_cap_is_refused_and_says_so() -> None:
    a = Admission(budget_s=10, max_in_flight=8, batch_capacity=4, batch_seconds=lambda n: 0.001)
    a.in_flight = 5
    with a.admit(3):
        assert a.in_flight == 8
    with pytest.raises(Overloaded, match="this request adds 4: over the 8"), a.admit(4):
        pass
    with pytest.raises(ValueError, match="at least 1"), a.admit(0):
        pass
    assert a.in_flight == 5


def test_an_idle_server_admits_any_request_even_over_the_budget() -> None:
    a = admission(budget_s=0.0)
    # 3 images on an idle server: refusing could not make them sooner.
    with a.admit(3), pytest.raises(Overloaded, match="budget"):
        a.check()
    with a.admit():
        pass
