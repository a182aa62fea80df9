"""A driver's session and how each event changes it: pings, status, trips, liveness."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.models import DriverStatus, LocationPing, PresenceChanged, TrackingUpdate, TripEvent
from streams.logic import InvalidEvent
from streams.logic.geo import NEARBY_RESOLUTION, cell

CLOSED_TRIPS_KEPT = 8
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
# The driver command that asks the owner of a partition to check its overdue drivers.
HEARTBEAT_SWEEP = "heartbeat_sweep"
STATUS = "status"


@dataclass(frozen=True)
class SessionRules:
    min_ping_interval_ms: int
    max_future_skew_ms: int
    tracking_interval_ms: int
    heartbeat_timeout_ms: int


@dataclass(frozen=True)
class DriverSession:
    driver_id: str
    online: bool = False
    eligibility: str = "ACTIVE"
    lat: float | None = None
    lng: float | None = None
    h3_res9: str | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None
    loc_ts_ms: int | None = None
    status_ts_ms: int = 0
    trip_id: str | None = None
    offline_reason: str | None = None
    tracking_sent_ms: int = 0
    closed_trips: tuple[str, ...] = ()
    region: str | None = None
    # The last sign of life: an accepted ping, or a status saying online. Liveness counts missed
    # heartbeats from here, not from the last ping alone: a driver who comes online after a long
    # break would otherwise be timed out before its first ping could arrive, and one who never
    # pings would stay online for ever.
    last_seen_ms: int | None = None
    # Bumped by every change: the Redis index applies a write only if it is newer than what it has.
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar or a tuple of strings: no deep copy needed, and asdict's recursion
        # showed in a ping's profile.
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriverSession:
        data = dict(data)
        data["closed_trips"] = tuple(data.get("closed_trips") or ())
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})

    @property
    def seen_ms(self) -> int | None:
        """When the driver was last seen (sessions stored before `last_seen_ms` existed: the last ping)."""
        if self.last_seen_ms is None:
            return self.loc_ts_ms
        return max(self.last_seen_ms, self.loc_ts_ms or 0)

    @property
    def assignable(self) -> bool:
        """Online, eligible, free and located (freshness is judged when a request reads it)."""
        return self.online and self.eligibility == "ACTIVE" and self.trip_id is None and self.h3_res9 is not None


_FIELDS = DriverSession.__dataclass_fields__.keys()


@dataclass(frozen=True)
class Effects:
    """What applying one event produced. `session` is None when nothing changed."""

    outcome: str
    session: DriverSession | None = None
    presence: PresenceChanged | None = None
    tracking: TrackingUpdate | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _changed(session: DriverSession, **changes: Any) -> DriverSession:
    # A copy of the fields rather than dataclasses.replace, which runs the frozen __init__ (one
    # object.__setattr__ per field) after reading the fields' definitions, three times the cost.
    changed = object.__new__(DriverSession)
    fields = changed.__dict__
    fields.update(session.__dict__)
    fields.update(changes)
    fields["version"] = session.version + 1
    return changed


def _check_not_future(ts_ms: int, now_ms: int, rules: SessionRules, field_name: str) -> None:
    if ts_ms - now_ms > rules.max_future_skew_ms:
        ahead = (ts_ms - now_ms) / 1000
        raise InvalidEvent(f"{ahead:.0f}s in the future (limit {rules.max_future_skew_ms / 1000:.0f}s)", field_name)


def apply_ping(
    session: DriverSession | None, ping: LocationPing, region: str | None, now_ms: int, rules: SessionRules
) -> Effects:
    ts = ms(ping.ts)
    _check_not_future(ts, now_ms, rules, "ts")
    current = session or DriverSession(driver_id=ping.driver_id)
    if current.loc_ts_ms is not None:
        if ts <= current.loc_ts_ms:
            return Effects("stale")
        if ts - current.loc_ts_ms < rules.min_ping_interval_ms:
            return Effects("throttled")
    presence = None
    changes: dict[str, Any] = {}
    if (
        not current.online
        and current.offline_reason == HEARTBEAT_TIMEOUT
        and now_ms - ts < rules.heartbeat_timeout_ms
    ):
        # Timed out, not signed off: the next ping brings the driver back, unless that ping is itself
        # already too old to count as a heartbeat (a late one from a backlog): it would bring the
        # driver online only for the next check to time it out again, two presence changes for nothing.
        changes.update(online=True, offline_reason=None)
        presence = PresenceChanged(
            driver_id=ping.driver_id, online=True, reason=HEARTBEAT_TIMEOUT, last_seen=ping.ts, ts=from_ms(now_ms)
        )
    tracking = None
    if current.trip_id is not None and ts - current.tracking_sent_ms >= rules.tracking_interval_ms:
        tracking = TrackingUpdate(
            booking_id=current.trip_id,
            driver_id=ping.driver_id,
            lat=ping.lat,
            lng=ping.lng,
            bearing=ping.heading_deg,
            speed_kmh=None if ping.speed_mps is None else round(ping.speed_mps * 3.6, 2),
            timestamp=ping.ts,
        )
        changes["tracking_sent_ms"] = ts
    moved = ping.lat != current.lat or ping.lng != current.lng
    updated = _changed(
        current,
        lat=ping.lat,
        lng=ping.lng,
        h3_res9=cell(ping.lat, ping.lng, NEARBY_RESOLUTION) if moved else current.h3_res9,
        speed_mps=ping.speed_mps,
        heading_deg=ping.heading_deg,
        loc_ts_ms=ts,
        last_seen_ms=max(ts, current.last_seen_ms or 0),
        region=region or current.region,
        **changes,
    )
    return Effects("accepted", updated, presence, tracking)


def apply_status(session: DriverSession | None, status: DriverStatus, now_ms: int, rules: SessionRules) -> Effects:
    ts = ms(status.ts)
    _check_not_future(ts, now_ms, rules, "ts")
    current = session or DriverSession(driver_id=status.driver_id)
    if ts < current.status_ts_ms:
        return Effects("stale")
    changes: dict[str, Any] = {"status_ts_ms": ts}
    kinds = []
    if status.eligibility is not None and status.eligibility != current.eligibility:
        changes["eligibility"] = status.eligibility
        kinds.append("eligibility")
    presence = None
    if status.online:
        # Saying online is a sign of life: the heartbeat clock starts here, not at an old ping.
        changes["last_seen_ms"] = max(ts, current.last_seen_ms or 0)
    if status.online is not None and status.online != current.online:
        changes["online"] = status.online
        changes["offline_reason"] = None if status.online else STATUS
        kinds.append("online" if status.online else "offline")
        seen = current.seen_ms
        presence = PresenceChanged(
            driver_id=status.driver_id,
            online=status.online,
            reason=STATUS,
            last_seen=from_ms(seen) if seen else None,
            ts=status.ts,
        )
    elif status.online is False and current.offline_reason == HEARTBEAT_TIMEOUT:
        # Already offline by timeout; the driver now says so too: stay offline until a status says online.
        changes["offline_reason"] = STATUS
        kinds.append("offline")
    return Effects("+".join(kinds) or "unchanged", _changed(current, **changes), presence)


def apply_trip(session: DriverSession | None, trip: TripEvent) -> Effects:
    """delivered and cancelled free the driver; picked_up confirms the trip."""
    if trip.status in ("delivered", "cancelled"):
        current = session or DriverSession(driver_id=trip.driverId)
        order = trip.orderId
        closed = (*[o for o in current.closed_trips if o != order], order)[-CLOSED_TRIPS_KEPT:]
        trip_id = None if current.trip_id == order else current.trip_id
        return Effects(trip.status, _changed(current, trip_id=trip_id, closed_trips=closed))
    return apply_assignment(session, trip.driverId, trip.orderId)


def apply_assignment(session: DriverSession | None, driver_id: str, order_id: str) -> Effects:
    """Records the driver's trip, unless that trip already ended (its end overtook this record)."""
    current = session or DriverSession(driver_id=driver_id)
    if order_id in current.closed_trips or current.trip_id == order_id:
        return Effects("ignored")
    return Effects("assigned", _changed(current, trip_id=order_id, tracking_sent_ms=0))


def check_heartbeat(session: DriverSession, now_ms: int, rules: SessionRules) -> Effects:
    """Marks an online driver offline when no ping came for the configured number of intervals."""
    if not heartbeat_due(session, now_ms, rules):
        return Effects("alive")
    seen = session.seen_ms
    assert seen is not None
    presence = PresenceChanged(
        driver_id=session.driver_id,
        online=False,
        reason=HEARTBEAT_TIMEOUT,
        last_seen=from_ms(seen),
        ts=from_ms(now_ms),
    )
    return Effects(HEARTBEAT_TIMEOUT, _changed(session, online=False, offline_reason=HEARTBEAT_TIMEOUT), presence)


def heartbeat_due(session: DriverSession, now_ms: int, rules: SessionRules) -> bool:
    seen = session.seen_ms
    return session.online and seen is not None and now_ms - seen >= rules.heartbeat_timeout_ms


def sweeps_due(
    partitions: Iterable[int], now_ms: int, rules: SessionRules, outstanding: Mapping[int, int]
) -> list[int]:
    """Of the partitions with overdue drivers, those to send a heartbeat sweep to: those with none on
    its way (`outstanding`: partition to when its sweep was sent). One sweep per partition at a time:
    a worker that falls behind would otherwise queue more at every tick, and they would bury the pings
    (the benchmark's 100,000 silent drivers did exactly that when each had a check of its own). A
    sweep unanswered for a whole heartbeat timeout is sent again."""
    timeout = rules.heartbeat_timeout_ms
    return sorted(p for p in partitions if now_ms - outstanding.get(p, now_ms - timeout) >= timeout)


def session_response(session: DriverSession) -> dict[str, Any]:
    """The DriverSessionResponse of seed 000."""
    response = unlocated_response(session)
    response["last_loc"] = last_location(
        session.lat, session.lng, session.h3_res9, session.speed_mps, session.heading_deg, session.loc_ts_ms
    )
    return response


def moved_only(before: DriverSession | None, after: DriverSession) -> bool:
    """Whether the index shows `after` as it shows `before` but for the position: the same response
    without `last_loc` (the same session document), the same availability. A first position makes a
    driver assignable: not a move alone."""
    # The fields unlocated_response is made of, compared where they are: this runs for every ping.
    return (
        before is not None
        and before.h3_res9 is not None
        and before.assignable == after.assignable
        and before.online == after.online
        and before.trip_id == after.trip_id
        and before.eligibility == after.eligibility
        and before.closed_trips == after.closed_trips
    )


def unlocated_response(session: DriverSession) -> dict[str, Any]:
    """The session's response without `last_loc`, which the index keeps in fields of its own that a
    ping rewrites alone (streams.index)."""
    return {
        "driver_id": session.driver_id,
        "online": session.online,
        "trip_id": session.trip_id,
        "eligibility": {"ok": session.eligibility == "ACTIVE", "status": session.eligibility},
    }


def last_location(lat: float | None, lng: float | None, h3_res9: str | None, speed_mps: float | None,
                  heading_deg: float | None, loc_ts_ms: int | None) -> dict[str, Any] | None:
    """A session response's `last_loc`: None until the driver's first ping."""
    if lat is None or loc_ts_ms is None:
        return None
    return {
        "lat": lat,
        "lng": lng,
        "h3_res9": h3_res9,
        "speed_mps": speed_mps,
        "heading_deg": heading_deg,
        "ts": from_ms(loc_ts_ms).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
