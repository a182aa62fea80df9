"""Seed 003's driver priority score, travel times and the whole-minute ETA of an assignment."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreWeights:
    base: float = 100.0
    slack_bonus_per_min: float = 10.0
    slack_bonus_cap: float = 50.0
    slack_penalty_per_min: float = 20.0
    distance_penalty_per_km: float = 5.0
    eta_penalty_per_min: float = 2.0
    avg_speed_kmh: float = 30.0


@dataclass(frozen=True)
class Candidate:
    driver_id: str
    distance_km: float  # driver to restaurant
    score: float
    eta_min: float  # assignment to delivery, unrounded


def travel_minutes(distance_km: float, speed_kmh: float) -> float:
    return distance_km / speed_kmh * 60.0


def priority_score(slack_min: float, distance_km: float, total_eta_min: float, w: ScoreWeights) -> float:
    """calculatePriorityScore of seed 003, with its constants as weights."""
    score = w.base
    if slack_min > 0:
        score += min(slack_min * w.slack_bonus_per_min, w.slack_bonus_cap)
    else:
        score -= abs(slack_min) * w.slack_penalty_per_min
    score -= distance_km * w.distance_penalty_per_km
    score -= total_eta_min * w.eta_penalty_per_min
    return max(score, 0.0)


def evaluate(
    driver_id: str, distance_km: float, preparation_min: float, delivery_km: float, w: ScoreWeights
) -> Candidate:
    """Slack is how long the food waits for the driver (negative: the driver waits for the food).
    Total ETA: driver to restaurant, any wait for the food, restaurant to customer."""
    to_restaurant = travel_minutes(distance_km, w.avg_speed_kmh)
    slack = preparation_min - to_restaurant
    eta = max(to_restaurant, preparation_min) + travel_minutes(delivery_km, w.avg_speed_kmh)
    return Candidate(driver_id, distance_km, priority_score(slack, distance_km, eta, w), eta)


def rank_key(candidate: Candidate) -> tuple[float, float, str]:
    """Best first: highest score, then nearest, then driver id (a stable, total order)."""
    return (-candidate.score, candidate.distance_km, candidate.driver_id)


def eta_minutes(candidate: Candidate) -> int:
    """Whole minutes, rounded up (the contract); 1e-9 keeps 25.0000000001 from becoming 26."""
    return max(0, math.ceil(candidate.eta_min - 1e-9))
