"""What the gateway knows of the city, kept from the topics it reads, and the messages each record
makes: pure (no I/O), so the feed (consumers.gateway.feed) applies records and the hub sends what
comes back.

Bookings: the owner from booking_owners, the driver from the assignment answers until a trip event
frees it, the last known location from booking_tracking (seed 002 §4: what a reconnecting client gets
first). A booking that ended (delivered, cancelled, refused) is forgotten `keep_ended_s` later.
The map: every driver's last ping and state, requests not answered yet, the last assignments."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import h3

from consumers.gateway.channels import Booking, events_channel, tracking_channel
from consumers.supply_demand import Totals, add_up
from schemas.models import (
    AssignmentRequested,
    AssignmentResponse,
    BookingOwner,
    LocationPing,
    PresenceChanged,
    SupplyDemand,
    TrackingUpdate,
    TripEvent,
    iso_utc,
)

# What a record makes: (channel, payload).
Message = tuple[str, dict[str, Any]]
# How long the map shows a request awaiting its answer, and an assignment after it was made.
MAP_RECENT_S = 30.0
ENDED_STATUSES = frozenset({"delivered", "cancelled", "failed"})


@dataclass
class BookingState:
    owner: str | None = None
    driver: str | None = None
    status: str | None = None
    last_location: dict[str, Any] | None = None
    ended_at: float | None = None

    @property
    def access(self) -> Booking:
        return Booking(owner=self.owner, driver=self.driver)


@dataclass
class DriverDot:
    lat: float
    lng: float
    seen_at: float
    online: bool = True
    on_trip: bool = False

    @property
    def state(self) -> str:
        if not self.online:
            return "offline"
        return "on_trip" if self.on_trip else "available"


@dataclass
class Revocation:
    """A subscription that must end: the driver of `channel` is no longer `driver`."""

    channel: str
    driver: str
    reason: str


@dataclass
class Applied:
    messages: list[Message] = field(default_factory=list)
    revocations: list[Revocation] = field(default_factory=list)


@dataclass
class City:
    keep_ended_s: float
    driver_max_age_s: float
    bookings: dict[str, BookingState] = field(default_factory=dict)
    drivers: dict[str, DriverDot] = field(default_factory=dict)
    # Requests awaiting an answer: order id -> (restaurant lat, lng, when seen).
    open_requests: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    assignments: deque[dict[str, Any]] = field(default_factory=deque)
    assignments_seen: int = 0
    supply_demand: dict[str, SupplyDemand] = field(default_factory=dict)

    def booking(self, booking_id: str) -> Booking | None:
        state = self.bookings.get(booking_id)
        return state.access if state else None

    def last_location(self, booking_id: str) -> dict[str, Any] | None:
        state = self.bookings.get(booking_id)
        return state.last_location if state else None

    # -- records -------------------------------------------------------------------------------

    def owner(self, booking_id: str, record: BookingOwner | None) -> None:
        """A booking's owner; None (a tombstone) forgets the booking."""
        if record is None:
            self.bookings.pop(booking_id, None)
            return
        self.bookings.setdefault(booking_id, BookingState()).owner = record.user_id

    def request(self, record: AssignmentRequested, now: float) -> None:
        self.open_requests[record.orderId] = (record.restaurantLatitude, record.restaurantLongitude, now)

    def response(self, record: AssignmentResponse, now: float) -> Applied:
        """An answer: the owner is told the booking's status; an assigned driver gets the offer."""
        restaurant = self.open_requests.pop(record.orderId, None)
        state = self.bookings.setdefault(record.orderId, BookingState())
        applied = Applied()
        at = record.assignedAt or record.failedAt
        status = {"booking_id": record.orderId, "status": record.status,
                  "timestamp": iso_utc(at) if at else None}
        if record.status == "assigned" and record.driverId:
            if state.driver not in (None, record.driverId):
                applied.revocations.append(Revocation(tracking_channel(record.orderId), state.driver, "reassigned"))
            state.driver, state.status, state.ended_at = record.driverId, "assigned", None
            status.update(driver_id=record.driverId, eta=record.eta)
            applied.messages.append((events_channel(record.driverId), {
                "type": "assignment_offer", "booking_id": record.orderId, "driver_id": record.driverId,
                "eta": record.eta, "timestamp": status["timestamp"]}))
            self._assigned_on_map(record, restaurant, now)
        else:
            state.status, state.ended_at = "failed", now
            status["error"] = record.error
        if state.owner:
            applied.messages.append((events_channel(state.owner), {"type": "booking_status", **status}))
        return applied

    def _assigned_on_map(self, record: AssignmentResponse, restaurant: tuple[float, float, float] | None,
                         now: float) -> None:
        dot = self.drivers.get(record.driverId or "")
        if dot is not None:
            dot.on_trip = True
        self.assignments_seen += 1
        if restaurant is None:
            return
        self.assignments.append({
            "booking_id": record.orderId, "driver_id": record.driverId, "lat": restaurant[0], "lng": restaurant[1],
            "driver_lat": dot.lat if dot else None, "driver_lng": dot.lng if dot else None, "at": now,
            "ts": iso_utc(record.assignedAt) if record.assignedAt else None})

    def trip(self, record: TripEvent, now: float) -> Applied:
        state = self.bookings.setdefault(record.orderId, BookingState())
        applied = Applied()
        state.status = record.status
        if record.status in ENDED_STATUSES:
            if state.driver:
                applied.revocations.append(Revocation(tracking_channel(record.orderId), state.driver,
                                                      f"trip_{record.status}"))
            state.driver, state.ended_at, state.last_location = None, now, None
            if (dot := self.drivers.get(record.driverId)) is not None:
                dot.on_trip = False
        if state.owner:
            applied.messages.append((events_channel(state.owner), {
                "type": "booking_status", "booking_id": record.orderId, "status": record.status,
                "driver_id": record.driverId, "timestamp": iso_utc(record.ts)}))
        return applied

    def tracking(self, record: TrackingUpdate, now: float) -> Message:
        state = self.bookings.setdefault(record.booking_id, BookingState())
        payload = record.model_dump(mode="json")
        state.last_location = payload
        if state.driver is None and state.ended_at is None:
            # Tracking is only written for a driver on the booking's trip: an answer older than the
            # gateway's look-back still names the driver this way.
            state.driver = record.driver_id
        dot = self.drivers.setdefault(record.driver_id, DriverDot(record.lat, record.lng, now))
        dot.lat, dot.lng, dot.seen_at, dot.on_trip = record.lat, record.lng, now, True
        return tracking_channel(record.booking_id), payload

    def presence(self, record: PresenceChanged, now: float) -> Message:
        if (dot := self.drivers.get(record.driver_id)) is not None:
            dot.online = record.online
        return "presence", record.model_dump(mode="json")

    def ping(self, record: LocationPing, now: float) -> None:
        dot = self.drivers.get(record.driver_id)
        if dot is None:
            self.drivers[record.driver_id] = DriverDot(record.lat, record.lng, now)
        else:
            dot.lat, dot.lng, dot.seen_at = record.lat, record.lng, now

    def share(self, key: str, record: SupplyDemand | None) -> None:
        if record is None:
            self.supply_demand.pop(key, None)
        else:
            self.supply_demand[key] = record

    # -- upkeep and the map --------------------------------------------------------------------

    def forget_old(self, now: float) -> None:
        """Ended bookings after keep_ended_s, drivers silent for driver_max_age_s, stale map entries."""
        for booking_id in [b for b, s in self.bookings.items() if s.ended_at and now - s.ended_at > self.keep_ended_s]:
            del self.bookings[booking_id]
        for driver_id in [d for d, dot in self.drivers.items() if now - dot.seen_at > self.driver_max_age_s]:
            del self.drivers[driver_id]
        for order_id in [o for o, (_, _, seen) in self.open_requests.items() if now - seen > MAP_RECENT_S]:
            del self.open_requests[order_id]
        while self.assignments and now - self.assignments[0]["at"] > MAP_RECENT_S:
            self.assignments.popleft()

    def map_snapshot(self, now: float) -> dict[str, Any]:
        return {
            "type": "map_snapshot",
            "ts": _iso(now),
            "drivers": [{"id": d, "lat": dot.lat, "lng": dot.lng, "state": dot.state}
                        for d, dot in self.drivers.items()],
            "requests": [{"id": o, "lat": lat, "lng": lng, "ts": _iso(seen)}
                         for o, (lat, lng, seen) in self.open_requests.items()],
            "assignments": [{k: v for k, v in a.items() if k != "at"} for a in self.assignments],
            "assignments_seen": self.assignments_seen,
            "cells": cells(add_up(self.supply_demand.values()).items()),
        }


def _iso(epoch_s: float) -> str:
    return iso_utc(datetime.fromtimestamp(epoch_s, UTC))


def cells(per_cell: Iterable[tuple[str, Totals]]) -> list[dict[str, Any]]:
    return [{"h3": cell, "boundary": [list(point) for point in h3.cell_to_boundary(cell)],
             "available_drivers": t.available_drivers, "requests": t.requests, "assigned": t.assigned,
             "refused": t.refused}
            for cell, t in per_cell]
