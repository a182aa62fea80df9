"""Assignment decisions: validating a request's coordinates, ranking candidates, and the answers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from schemas.models import COORDINATE_FIELDS, AssignmentRequested, AssignmentResponse, iso_utc
from streams.logic.geo import haversine_km
from streams.logic.scoring import Candidate, ScoreWeights, evaluate, rank_key

NO_DRIVERS = "No available drivers in area"
INVALID_COORDINATES = "Invalid coordinates"
LIMITS = {
    "restaurantLatitude": 90.0,
    "customerLatitude": 90.0,
    "restaurantLongitude": 180.0,
    "customerLongitude": 180.0,
}


def coordinates_problem(raw: Mapping[str, Any]) -> str | None:
    """The first coordinate that is missing, not a number, not finite or out of range."""
    for name in COORDINATE_FIELDS:
        value = raw.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{name} is not a number"
        if not math.isfinite(value) or abs(value) > LIMITS[name]:
            return f"{name} is out of range"
    return None


def rank(found: Iterable[tuple[str, float]], request: AssignmentRequested, weights: ScoreWeights) -> list[Candidate]:
    """Candidates (driver id, km to the restaurant), best first by the seed's priority score."""
    delivery_km = haversine_km(
        request.restaurantLatitude, request.restaurantLongitude, request.customerLatitude, request.customerLongitude
    )
    scored = [evaluate(driver_id, km, request.preparationTime, delivery_km, weights) for driver_id, km in found]
    return sorted(scored, key=rank_key)


def assigned(order_id: str, driver_id: str, eta: int, at: datetime) -> dict[str, Any]:
    return {"orderId": order_id, "driverId": driver_id, "eta": eta, "assignedAt": iso_utc(at), "status": "assigned"}


def failed(order_id: str, error: str, at: datetime) -> dict[str, Any]:
    return {"orderId": order_id, "error": error, "failedAt": iso_utc(at), "status": "failed"}


def response_of(decision: Mapping[str, Any]) -> AssignmentResponse:
    return AssignmentResponse.model_validate(decision)


REQUEST_EXPIRED = "Request expired"


def decided_at_ms(decision: Mapping[str, Any]) -> int:
    """When a decision was made, in epoch ms: its assignedAt, or failedAt for a failure."""
    stamp = decision.get("assignedAt") if decision.get("status") == "assigned" else decision.get("failedAt")
    return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() * 1000)


def reusable(decision: Mapping[str, Any], now_ms: int, failed_ttl_ms: int, retention_ms: int) -> bool:
    """An assigned decision is given again for its retention; a failure only while it is recent, so that
    the order service's later retry of the same order gets a fresh attempt."""
    age_ms = now_ms - decided_at_ms(decision)
    return age_ms < (retention_ms if decision.get("status") == "assigned" else failed_ttl_ms)


def expired_request(sent_at_ms: int, now_ms: int, retention_ms: int, max_clock_skew_ms: int) -> bool:
    """A request too old to be decided: its decision, if it had one, may have outlived its retention and
    be gone, and deciding again could give the order a second driver. A decision is made after its
    request was sent, so a request younger than the retention still finds its decision, but for the
    sender's clock running ahead of ours, which the skew allowance covers."""
    return now_ms - sent_at_ms >= retention_ms - max_clock_skew_ms
