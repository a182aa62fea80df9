"""Seed 003's priority score, ETA rounding and tie-breaking, with the seed's own weights."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.logic.scoring import Candidate, ScoreWeights, eta_minutes, evaluate, priority_score, rank_key

SEED = ScoreWeights()  # base 100, slack +10/min capped at 50, -20/min, -5/km, -2/min of ETA, 30 km/h


def test_weights_default_to_the_seeds_constants():
    assert (SEED.base, SEED.slack_bonus_per_min, SEED.slack_bonus_cap, SEED.slack_penalty_per_min,
            SEED.distance_penalty_per_km, SEED.eta_penalty_per_min) == (100, 10, 50, 20, 5, 2)


@pytest.mark.parametrize(
    ("slack", "distance", "eta", "expected"),
    [
        (3, 1, 10, 100 + 30 - 5 - 20),  # positive slack: +10 per minute
        (10, 0, 0, 150),  # bonus capped at 50
        (-2, 2, 20, 100 - 40 - 10 - 40),  # negative slack: -20 per minute
        (-10, 10, 60, 0),  # never below zero
        (0, 0, 0, 100),
    ],
)
def test_priority_score_matches_the_seed(slack, distance, eta, expected):
    assert priority_score(slack, distance, eta, SEED) == pytest.approx(expected)


def test_evaluate_computes_slack_eta_and_score():
    # 2 km at 30 km/h = 4 min to the restaurant; food ready in 10: slack 6, waits for the food.
    candidate = evaluate("drv", 2.0, 10.0, 5.0, SEED)
    assert candidate.eta_min == pytest.approx(10 + 10)  # max(4, 10) + 5 km at 30 km/h
    assert candidate.score == pytest.approx(100 + 50 - 10 - 40)


def test_eta_includes_travel_when_the_driver_is_late():
    candidate = evaluate("drv", 10.0, 5.0, 2.5, SEED)  # 20 min away, food ready in 5
    assert candidate.eta_min == pytest.approx(20 + 5)
    assert eta_minutes(candidate) == 25


def test_eta_rounds_up_to_whole_minutes():
    assert eta_minutes(Candidate("d", 0, 0, 25.01)) == 26
    assert eta_minutes(Candidate("d", 0, 0, 25.0)) == 25
    assert eta_minutes(Candidate("d", 0, 0, 0.2)) == 1


def test_ties_break_by_distance_then_driver_id():
    a = Candidate("b", 1.0, 0.0, 10)
    b = Candidate("a", 2.0, 0.0, 10)
    c = Candidate("a", 1.0, 0.0, 10)
    assert sorted([a, b, c], key=rank_key) == [c, a, b]


@given(st.floats(0, 50), st.floats(0, 50), st.floats(0, 60), st.floats(0, 30))
def test_score_never_increases_with_distance(d1, d2, prep, delivery):
    near, far = sorted((d1, d2))
    assert evaluate("x", near, prep, delivery, SEED).score >= evaluate("x", far, prep, delivery, SEED).score - 1e-9
