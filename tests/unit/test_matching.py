"""Batched matching (streams.logic.matching) against greedy, the choice of every request in turn, and
against every matching there is, on inputs small enough to list them all."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.logic.matching import offered, optimal
from streams.logic.scoring import Candidate, rank_key


def options(*orders: dict[str, float]) -> list[list[Candidate]]:
    """Each order's candidates (driver: score), best first as the assignment ranks them."""
    return [sorted((Candidate(d, 1.0, score, 10.0) for d, score in order.items()), key=rank_key) for order in orders]


def greedy(choices: list[list[Candidate]]) -> list[int | None]:
    """What a greedy block does (decide.lua): each order in turn takes its best candidate still free."""
    taken: set[str] = set()
    chosen: list[int | None] = []
    for candidates in choices:
        k = next((k for k, c in enumerate(candidates) if c.driver_id not in taken), None)
        if k is not None:
            taken.add(candidates[k].driver_id)
        chosen.append(k)
    return chosen


def served(choices, chosen) -> tuple[int, float]:
    picked = [choices[i][k] for i, k in enumerate(chosen) if k is not None]
    return len(picked), sum(c.score for c in picked)


def drivers_of(choices, chosen) -> list[str]:
    return [choices[i][k].driver_id for i, k in enumerate(chosen) if k is not None]


def test_greedy_takes_the_only_driver_of_the_next_order_and_the_matching_serves_both():
    choices = options({"x": 90, "y": 80}, {"x": 85})
    assert drivers_of(choices, greedy(choices)) == ["x"]
    assert drivers_of(choices, optimal(choices)) == ["y", "x"]


def test_at_an_equal_count_the_matching_has_the_higher_total_score():
    choices = options({"x": 100, "y": 95}, {"x": 100, "y": 50})
    assert served(choices, greedy(choices)) == (2, 150)
    assert served(choices, optimal(choices)) == (2, 195)
    assert drivers_of(choices, optimal(choices)) == ["y", "x"]


def test_one_order_more_outweighs_any_score():
    choices = options({"x": 150, "y": 0}, {"x": 1})
    assert drivers_of(choices, optimal(choices)) == ["y", "x"]


def test_orders_that_share_no_candidate_each_get_their_best():
    choices = options({"x": 10, "y": 90}, {"z": 50, "w": 60}, {})
    assert drivers_of(choices, optimal(choices)) == ["y", "w"]
    assert optimal(choices)[2] is None


def test_offered_puts_the_match_first_and_leaves_out_the_other_orders_matches():
    choices = options({"x": 100, "y": 95, "z": 10}, {"x": 100, "y": 50})
    chosen = optimal(choices)
    lists = offered(choices, chosen)
    assert [c.driver_id for c in lists[0]] == ["y", "z"]
    assert [c.driver_id for c in lists[1]] == ["x"]
    # Three orders, two drivers: the first order, whose only candidate the third scores higher with,
    # is left without a match and offered no driver a match needs.
    short = options({"x": 90}, {"x": 80, "y": 70}, {"x": 99, "y": 60})
    lists = offered(short, optimal(short))
    assert [[c.driver_id for c in candidates] for candidates in lists] == [[], ["y"], ["x"]]


def best_possible(choices: list[list[Candidate]]) -> tuple[int, float]:
    """The most orders any matching serves, then the highest total score at that count: every way to
    give each order one of its candidates or none, with no driver twice."""
    best = (0, 0.0)
    for picks in itertools.product(*[[None, *range(len(c))] for c in choices]):
        drivers = [choices[i][k].driver_id for i, k in enumerate(picks) if k is not None]
        if len(drivers) == len(set(drivers)):
            count, total = served(choices, picks)
            if count > best[0] or (count == best[0] and total > best[1]):
                best = (count, total)
    return best


scores = st.integers(min_value=0, max_value=150).map(float)


@st.composite
def windows(draw, max_orders: int = 7, max_drivers: int = 7) -> list[list[Candidate]]:
    drivers = [f"d{n}" for n in range(draw(st.integers(1, max_drivers)))]
    orders = draw(st.lists(st.dictionaries(st.sampled_from(drivers), scores, max_size=len(drivers)),
                           max_size=max_orders))
    return options(*orders)


@settings(max_examples=300, deadline=None)
@given(windows())
def test_the_matching_never_gives_a_driver_twice_nor_serves_fewer_or_worse_than_greedy(choices):
    chosen = optimal(choices)
    assert len(chosen) == len(choices)
    assert all(k is None or 0 <= k < len(choices[i]) for i, k in enumerate(chosen))
    drivers = drivers_of(choices, chosen)
    assert len(drivers) == len(set(drivers))
    count, total = served(choices, chosen)
    greedy_count, greedy_total = served(choices, greedy(choices))
    assert count >= greedy_count
    if count == greedy_count:
        assert total >= greedy_total - 1e-6
    # Every order offered its match first, and no driver first on two lists.
    lists = offered(choices, chosen)
    firsts = [lst[0].driver_id for lst, k in zip(lists, chosen, strict=True) if k is not None]
    assert firsts == drivers


@settings(max_examples=150, deadline=None)
@given(windows(max_orders=4, max_drivers=4))
def test_the_matching_is_the_best_there_is(choices):
    count, total = served(choices, optimal(choices))
    best_count, best_total = best_possible(choices)
    assert count == best_count
    assert abs(total - best_total) < 1e-6
