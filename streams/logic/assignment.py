"""Assignment decisions: validating a request's coordinates, ranking candidates, and the answers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.models import COORDINATE_FIELDS, AssignmentRequested, AssignmentResponse, iso_utc
from schemas.models import NO_DRIVERS as NO_DRIVERS  # the failure this module's callers name
from streams.logic.geo import haversine_km
from streams.logic.scoring import Candidate, ScoreWeights, evaluate, rank_key

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


@dataclass(frozen=True, slots=True)
class Decision:
    """An order's decision: the driver it was given, or why it got none. Kept (in the decisions table
    and in Redis) as its answer's record, the seed's response shape, so an answer given again is
    byte for byte the first."""

    order_id: str
    decided_at: str  # ISO-8601 in UTC with milliseconds: the answer's assignedAt or failedAt
    driver_id: str | None = None  # None for a failure
    eta: int | None = None
    error: str | None = None

    @property
    def assigned(self) -> bool:
        return self.driver_id is not None

    @property
    def status(self) -> str:
        return "assigned" if self.assigned else "failed"

    def record(self) -> dict[str, Any]:
        """The answer's fields, as stored and sent."""
        if self.assigned:
            return {"orderId": self.order_id, "driverId": self.driver_id, "eta": self.eta,
                    "assignedAt": self.decided_at, "status": "assigned"}
        return {"orderId": self.order_id, "error": self.error, "failedAt": self.decided_at, "status": "failed"}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Decision:
        if record.get("status") == "assigned":
            return cls(str(record["orderId"]), str(record["assignedAt"]), driver_id=str(record["driverId"]),
                       eta=int(record["eta"]))
        return cls(str(record["orderId"]), str(record["failedAt"]), error=str(record["error"]))

    def response(self) -> AssignmentResponse:
        return AssignmentResponse.model_validate(self.record())

    def decided_at_ms(self) -> int:
        """When it was made, in epoch ms."""
        return int(datetime.fromisoformat(self.decided_at.replace("Z", "+00:00")).timestamp() * 1000)


def assigned(order_id: str, driver_id: str, eta: int, at: datetime) -> Decision:
    return Decision(order_id, iso_utc(at), driver_id=driver_id, eta=eta)


def failed(order_id: str, error: str, at: datetime) -> Decision:
    return Decision(order_id, iso_utc(at), error=error)


REQUEST_EXPIRED = "Request expired"


def reusable(decision: Decision, now_ms: int, failed_ttl_ms: int, retention_ms: int) -> bool:
    """An assigned decision is given again for its retention; a failure only while it is recent, so that
    the order service's later retry of the same order gets a fresh attempt."""
    age_ms = now_ms - decision.decided_at_ms()
    return age_ms < (retention_ms if decision.assigned else failed_ttl_ms)


def assign_due(decision: Decision, decided_before: bool, holder: str | None) -> bool:
    """Whether the driver is sent the trip with this answer: always for a decision just made; for one
    made before (a redelivered or replayed request, or another worker's) only while the driver's
    reservation still holds the order. The worker that decided may have died before sending the
    command, and then the reservation still holds; once the trip closed, its reservation is released
    (upsert.lua), and an assign sent then would put the driver back on a delivered order that his
    session no longer remembers. Redis decides, not clocks, so a skewed clock cannot make it wrong."""
    return decision.assigned and (not decided_before or holder == decision.order_id)


def expired_request(sent_at_ms: int, now_ms: int, retention_ms: int, max_clock_skew_ms: int) -> bool:
    """A request too old to be decided: its decision, if it had one, may have outlived its retention and
    be gone, and deciding again could give the order a second driver. A decision is made after its
    request was sent, so a request younger than the retention still finds its decision, but for the
    sender's clock running ahead of ours, which the skew allowance covers."""
    return now_ms - sent_at_ms >= retention_ms - max_clock_skew_ms
