"""The failover figure of the fault suite (tests/faults/failover.py): from each request's first answer,
how long the requests a kill left waiting took to be answered again."""

from __future__ import annotations

from tests.faults.failover import failover_times, spread

KILL = 1_000.0  # epoch s


def answered(asked_s: float, at_s: float) -> tuple[int, float]:
    """Timing.latencies' value: (answered at, epoch ms; seconds it took)."""
    return int(at_s * 1000), at_s - asked_s


def test_the_last_answer_to_a_request_asked_around_the_kill_is_the_failover():
    latencies = {
        "before, answered before": answered(KILL - 3, KILL - 2.9),
        "before, on the dead worker": answered(KILL - 0.5, KILL + 12.4),
        "after, on the survivor": answered(KILL + 0.5, KILL + 0.6),
        "after, on the dead worker": answered(KILL + 1.5, KILL + 12.6),
    }
    assert failover_times(latencies, [KILL]) == [12.6]


def test_requests_asked_well_after_the_kill_do_not_count_even_if_slow():
    latencies = {"dead worker's": answered(KILL + 0.2, KILL + 6.0), "a later slow one": answered(KILL + 9, KILL + 20)}
    assert failover_times(latencies, [KILL]) == [6.0]


def test_each_kill_gets_its_own_figure_and_a_kill_nobody_waited_on_counts_zero():
    latencies = {"first": answered(KILL, KILL + 7), "second": answered(KILL + 60, KILL + 64)}
    assert failover_times(latencies, [KILL, KILL + 60, KILL + 120]) == [7.0, 4.0, 0.0]


def test_the_spread_of_the_kills():
    assert spread([12.6, 7.0, 9.1]) == {"failover min (s)": 7.0, "failover median (s)": 9.1,
                                        "failover max (s)": 12.6}
