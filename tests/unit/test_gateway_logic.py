"""The gateway's pure parts: seed 002's channels and access rules, the per-subscriber throttle, and
what the city view makes of each record."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumers.gateway.channels import (
    Booking,
    Refused,
    Subscriber,
    channel_scopes,
    check_subscription,
    parse_channel,
    subscriber_from_claims,
)
from consumers.gateway.city import City
from consumers.gateway.throttle import Throttle
from schemas.models import AssignmentRequested, AssignmentResponse, BookingOwner, TrackingUpdate, TripEvent

EVERYTHING = ("booking.*.tracking", "user.*.events", "presence", "map")
AT = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)


def who(role: str, user: str = "u1", scopes: tuple[str, ...] = EVERYTHING) -> Subscriber:
    return Subscriber(user, role, scopes, expires_at=2e9)


def refusal(subscriber: Subscriber, name: str, booking: Booking | None = None) -> str | None:
    try:
        check_subscription(subscriber, parse_channel(name), booking)
    except Refused as exc:
        return exc.error
    return None


@pytest.mark.parametrize(("name", "kind", "subject"), [
    ("booking.o-1.tracking", "tracking", "o-1"),
    ("user.drv_7.events", "events", "drv_7"),
    ("presence", "presence", None),
    ("map", "map", None),
])
def test_the_channels_of_seed_002(name, kind, subject):
    channel = parse_channel(name)
    assert (channel.kind, channel.subject) == (kind, subject)


@pytest.mark.parametrize("name", ["booking.o-1.chat", "booking..tracking", "booking.a.b.tracking", "user.u1",
                                  "", "MAP"])
def test_other_names_are_unknown(name):
    with pytest.raises(Refused) as refused:
        parse_channel(name)
    assert refused.value.error in ("unknown_channel", "invalid_request")


def test_a_client_follows_only_the_bookings_it_owns():
    mine, theirs = Booking(owner="u1"), Booking(owner="u2")
    assert refusal(who("client"), "booking.b.tracking", mine) is None
    assert refusal(who("client"), "booking.b.tracking", theirs) == "forbidden"
    assert refusal(who("client"), "booking.b.tracking", None) == "forbidden"


def test_a_driver_follows_a_booking_only_while_assigned():
    assert refusal(who("driver", "d1"), "booking.b.tracking", Booking(owner="u1", driver="d1")) is None
    assert refusal(who("driver", "d1"), "booking.b.tracking", Booking(owner="u1", driver="d2")) == "forbidden"
    assert refusal(who("driver", "d1"), "booking.b.tracking", Booking(owner="u1")) == "forbidden"


def test_a_users_events_are_its_own_and_the_fleet_channels_are_for_the_back_office():
    assert refusal(who("client"), "user.u1.events") is None
    assert refusal(who("client"), "user.u2.events") == "forbidden"
    for channel in ("presence", "map"):
        assert refusal(who("client"), channel) == "forbidden"
        assert refusal(who("driver"), channel) == "forbidden"
    for role in ("support", "admin"):
        assert refusal(who(role), "booking.b.tracking", None) is None
        assert refusal(who(role), "user.u2.events") is None
        assert refusal(who(role), "map") is None


def test_the_tokens_scopes_limit_every_role():
    assert refusal(who("support", scopes=("booking.*.tracking",)), "map") == "forbidden"
    assert refusal(who("client", scopes=("booking.b.tracking",)), "booking.b.tracking", Booking(owner="u1")) is None
    assert refusal(who("client", scopes=("booking.b.tracking",)), "booking.c.tracking", Booking(owner="u1")) \
        == "forbidden"
    assert refusal(who("client", scopes=()), "user.u1.events") == "forbidden"


def test_the_caller_comes_from_the_claims():
    caller = subscriber_from_claims({"sub": "u1", "role": "client", "scopes": "map presence", "exp": 5})
    assert (caller.user_id, caller.role, caller.scopes, caller.expires_at) == ("u1", "client", ("map", "presence"), 5)
    assert channel_scopes({"scopes": ["a", "b"]}) == ("a", "b")
    for claims in ({"role": "client", "exp": 5}, {"sub": "u1", "role": "rider", "exp": 5}):
        with pytest.raises(Refused):
            subscriber_from_claims(claims)


def test_the_throttle_lets_the_first_through_and_ends_on_the_newest():
    throttle = Throttle.per_second(2)
    assert throttle.offer("a", now=0.0) == "a"
    assert throttle.offer("b", now=0.1) is None
    assert throttle.offer("c", now=0.2) is None
    assert throttle.due_at() == pytest.approx(0.5)
    assert throttle.take_due(0.4) is None
    assert throttle.take_due(0.5) == "c"
    assert throttle.take_due(0.6) is None
    assert throttle.offer("d", now=0.7) is None  # 0.2 s after "c" went
    assert throttle.take_due(1.0) == "d"
    assert throttle.offer("e", now=2.0) == "e"


def test_the_throttle_never_sends_more_than_its_rate():
    throttle, sent = Throttle.per_second(4), []
    for step in range(1000):
        now = step * 0.003
        if throttle.offer(step, now) is not None or throttle.take_due(now) is not None:
            sent.append(now)
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    # A flush runs up to a step late, and the next turn counts from when it was due.
    assert min(gaps) >= 0.25 - 0.003 - 1e-9
    assert len(sent) == pytest.approx(3.0 * 4, abs=1)


def test_updates_at_the_limits_own_rate_wait_no_longer_and_longer():
    """Updates once a second at a limit of one a second, each a hair early, each flush a millisecond
    late: the wait stays a millisecond, it does not grow by one every second."""
    throttle, waits = Throttle.per_second(1), []
    for second in range(600):
        arrives = second - 0.0005
        if throttle.offer(second, arrives) is None:
            flushed_at = throttle.due_at() + 0.001
            assert throttle.take_due(flushed_at) == second
            waits.append(flushed_at - arrives)
    assert max(waits) < 0.002


def city() -> City:
    return City(keep_ended_s=60, driver_max_age_s=60)


def answer(order: str, driver: str | None) -> AssignmentResponse:
    if driver is None:
        return AssignmentResponse(orderId=order, status="failed", error="No available drivers in area", failedAt=AT)
    return AssignmentResponse(orderId=order, status="assigned", driverId=driver, eta=12, assignedAt=AT)


def update(order: str, driver: str, lat: float = 40.7) -> TrackingUpdate:
    return TrackingUpdate(booking_id=order, driver_id=driver, lat=lat, lng=-74.0, timestamp=AT)


def test_an_assignment_tells_the_owner_and_offers_the_driver():
    view = city()
    view.owner("o1", BookingOwner(booking_id="o1", user_id="u1", ts=AT))
    applied = view.response(answer("o1", "d1"), now=0)
    channels = {channel: payload for channel, payload in applied.messages}
    assert channels["user.u1.events"] == {"type": "booking_status", "booking_id": "o1", "status": "assigned",
                                          "driver_id": "d1", "eta": 12, "timestamp": "2026-01-15T10:30:00.000Z"}
    assert channels["user.d1.events"]["type"] == "assignment_offer"
    assert view.booking("o1") == Booking(owner="u1", driver="d1")


def test_a_trip_that_ends_frees_the_driver_and_revokes_its_subscription():
    view = city()
    view.owner("o1", BookingOwner(booking_id="o1", user_id="u1", ts=AT))
    view.response(answer("o1", "d1"), now=0)
    view.tracking(update("o1", "d1"), now=1)
    applied = view.trip(TripEvent(orderId="o1", driverId="d1", status="delivered", ts=AT), now=2)
    assert [(r.channel, r.driver) for r in applied.revocations] == [("booking.o1.tracking", "d1")]
    assert view.booking("o1") == Booking(owner="u1", driver=None)
    assert view.last_location("o1") is None
    view.forget_old(now=2 + 61)
    assert view.booking("o1") is None


def test_the_last_known_location_is_kept_and_names_the_driver_of_an_answer_older_than_the_look_back():
    view = city()
    channel, payload = view.tracking(update("o1", "d1", lat=40.1), now=0)
    view.tracking(update("o1", "d1", lat=40.2), now=1)
    assert channel == "booking.o1.tracking" and payload["lat"] == 40.1
    assert view.last_location("o1")["lat"] == 40.2
    assert view.booking("o1").driver == "d1"


def test_a_tombstone_forgets_the_owner():
    view = city()
    view.owner("o1", BookingOwner(booking_id="o1", user_id="u1", ts=AT))
    view.owner("o1", None)
    assert view.booking("o1") is None


def test_the_map_shows_drivers_by_state_requests_awaiting_and_recent_assignments():
    view = city()
    view.tracking(update("o0", "d0"), now=0)
    request = AssignmentRequested(orderId="o1", restaurantLatitude=40.70, restaurantLongitude=-74.0,
                                  customerLatitude=40.71, customerLongitude=-74.01)
    view.request(request, now=0)
    snapshot = view.map_snapshot(now=0)
    assert snapshot["requests"][0]["id"] == "o1"
    assert snapshot["drivers"] == [{"id": "d0", "lat": 40.7, "lng": -74.0, "state": "on_trip"}]
    view.response(answer("o1", "d0"), now=1)
    snapshot = view.map_snapshot(now=1)
    assert snapshot["requests"] == [] and snapshot["assignments"][0]["booking_id"] == "o1"
    assert snapshot["assignments_seen"] == 1
    view.forget_old(now=40)
    assert view.map_snapshot(now=40)["assignments"] == []
