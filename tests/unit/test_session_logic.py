"""The pure session logic: staleness, throttling, future times, liveness, trips and rider tracking."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.models import DriverStatus, LocationPing, TripEvent
from streams.logic import InvalidEvent
from streams.logic.sessions import (
    CLOSED_TRIPS_KEPT,
    HEARTBEAT_TIMEOUT,
    STATUS,
    DriverSession,
    SessionRules,
    apply_assignment,
    apply_ping,
    apply_status,
    apply_trip,
    check_heartbeat,
    heartbeat_due,
    moved_only,
    session_response,
    sweeps_due,
)

T0 = 1_768_473_000_000  # 2026-01-15T10:30:00Z
RULES = SessionRules(min_ping_interval_ms=1000, max_future_skew_ms=60_000, tracking_interval_ms=1000,
                     heartbeat_timeout_ms=15_000)
NYC = (40.7128, -74.006)
UNTHROTTLED = replace(RULES, min_ping_interval_ms=0)
TRACKING_FIELDS = {"type", "booking_id", "driver_id", "lat", "lng", "bearing", "speed_kmh", "timestamp"}


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def ping(ts_ms: int, driver: str = "drv_7", lat: float = NYC[0], lng: float = NYC[1], **extra) -> LocationPing:
    return LocationPing(driver_id=driver, lat=lat, lng=lng, ts=at(ts_ms), **extra)


def status(ts_ms: int, online: bool | None = True, eligibility: str | None = None, driver: str = "drv_7"):
    return DriverStatus(driver_id=driver, online=online, eligibility=eligibility, ts=at(ts_ms))


def trip(order: str, state: str, driver: str = "drv_7") -> TripEvent:
    return TripEvent(orderId=order, driverId=driver, status=state, ts=at(T0))


def online_at(ts_ms: int, rules: SessionRules = RULES) -> DriverSession:
    """A driver who said online and pinged at ts_ms."""
    session = apply_status(None, status(ts_ms), ts_ms, rules).session
    return apply_ping(session, ping(ts_ms), "4_-7", ts_ms, rules).session


# -- pings ------------------------------------------------------------------------------------------


def test_a_ping_from_a_new_driver_creates_an_offline_located_session():
    effects = apply_ping(None, ping(T0, speed_mps=8.3, heading_deg=90.0), "4_-7", T0, RULES)
    assert effects.outcome == "accepted"
    s = effects.session
    assert s.driver_id == "drv_7" and s.online is False and s.offline_reason is None
    assert (s.lat, s.lng, s.loc_ts_ms, s.region) == (*NYC, T0, "4_-7")
    assert s.h3_res9 == h3.latlng_to_cell(*NYC, 9)
    assert (s.speed_mps, s.heading_deg) == (8.3, 90.0)
    assert not s.assignable
    assert effects.presence is None and effects.tracking is None


def test_an_older_or_equal_ping_is_stale_and_changes_nothing():
    s = online_at(T0)
    assert apply_ping(s, ping(T0), "4_-7", T0, RULES).outcome == "stale"
    effects = apply_ping(s, ping(T0 - 5000), "4_-7", T0, RULES)
    assert effects.outcome == "stale" and effects.session is None


def test_pings_closer_than_the_minimum_interval_are_throttled():
    s = online_at(T0)
    effects = apply_ping(s, ping(T0 + 999), "4_-7", T0 + 999, RULES)
    assert effects.outcome == "throttled" and effects.session is None
    assert apply_ping(s, ping(T0 + 1000), "4_-7", T0 + 1000, RULES).outcome == "accepted"


def test_no_minimum_interval_accepts_every_newer_ping():
    rules = replace(RULES, min_ping_interval_ms=0)
    s = online_at(T0, rules)
    assert apply_ping(s, ping(T0 + 1), "4_-7", T0 + 1, rules).outcome == "accepted"


def test_a_ping_far_in_the_future_is_invalid():
    with pytest.raises(InvalidEvent) as caught:
        apply_ping(None, ping(T0 + 60_001), "4_-7", T0, RULES)
    assert caught.value.field == "ts"
    assert apply_ping(None, ping(T0 + 60_000), "4_-7", T0, RULES).outcome == "accepted"


def test_a_status_far_in_the_future_is_invalid():
    with pytest.raises(InvalidEvent):
        apply_status(None, status(T0 + 61_000), T0, RULES)


def test_a_ping_keeps_the_session_when_the_driver_crosses_regions():
    s = online_at(T0)
    moved = apply_ping(s, ping(T0 + 2000, lat=6.5244, lng=3.3792), "0_0", T0 + 2000, RULES).session
    assert moved.region == "0_0" and moved.online and moved.h3_res9 == h3.latlng_to_cell(6.5244, 3.3792, 9)
    assert moved.version > s.version


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=-30_000, max_value=30_000), min_size=1, max_size=40))
def test_accepted_pings_only_move_forward_and_respect_the_interval(offsets):
    session = None
    accepted: list[int] = []
    for offset in offsets:
        effects = apply_ping(session, ping(T0 + offset), "4_-7", T0 + 30_000, RULES)
        if effects.session is not None:
            assert session is None or effects.session.version == session.version + 1
            session = effects.session
            accepted.append(T0 + offset)
        assert effects.outcome in ("accepted", "stale", "throttled")
    assert accepted == sorted(accepted)
    assert all(b - a >= RULES.min_ping_interval_ms for a, b in zip(accepted, accepted[1:], strict=False))
    assert session.loc_ts_ms == accepted[-1]


# -- status -----------------------------------------------------------------------------------------


def test_status_online_and_offline_publish_presence_with_reason_status():
    s = online_at(T0)
    assert s.online and s.assignable
    effects = apply_status(s, status(T0 + 1000, online=False), T0 + 1000, RULES)
    assert effects.outcome == "offline"
    assert effects.session.online is False and effects.session.offline_reason == STATUS
    assert effects.presence.online is False and effects.presence.reason == STATUS
    assert effects.presence.last_seen == at(T0) and effects.presence.ts == at(T0 + 1000)
    back = apply_status(effects.session, status(T0 + 2000, online=True), T0 + 2000, RULES)
    assert back.outcome == "online" and back.session.online and back.presence.online is True


def test_a_status_repeating_the_state_publishes_nothing():
    s = online_at(T0)
    effects = apply_status(s, status(T0 + 1000, online=True), T0 + 1000, RULES)
    assert effects.outcome == "unchanged" and effects.presence is None


def test_an_older_status_is_stale():
    s = apply_status(None, status(T0), T0, RULES).session
    effects = apply_status(s, status(T0 - 1, online=False), T0, RULES)
    assert effects.outcome == "stale" and effects.session is None


@pytest.mark.parametrize("eligibility", ["SUSPENDED", "INACTIVE"])
def test_only_active_drivers_are_assignable(eligibility):
    s = online_at(T0)
    effects = apply_status(s, status(T0 + 1, online=None, eligibility=eligibility), T0 + 1, RULES)
    assert effects.outcome == "eligibility"
    assert effects.session.online and not effects.session.assignable
    assert session_response(effects.session)["eligibility"] == {"ok": False, "status": eligibility}


def test_a_driver_who_said_offline_stays_offline_on_pings():
    s = apply_status(online_at(T0), status(T0 + 1000, online=False), T0 + 1000, RULES).session
    for i in range(1, 5):
        effects = apply_ping(s, ping(T0 + 1000 + i * 2000), "4_-7", T0 + 1000 + i * 2000, RULES)
        assert effects.outcome == "accepted" and effects.presence is None
        s = effects.session
        assert s.online is False
    assert s.loc_ts_ms == T0 + 9000


# -- liveness ---------------------------------------------------------------------------------------


def test_missed_heartbeats_take_an_online_driver_offline():
    s = online_at(T0)
    assert check_heartbeat(s, T0 + 14_999, RULES).outcome == "alive"
    effects = check_heartbeat(s, T0 + 15_000, RULES)
    assert effects.outcome == HEARTBEAT_TIMEOUT
    assert effects.session.online is False and effects.session.offline_reason == HEARTBEAT_TIMEOUT
    assert not effects.session.assignable
    p = effects.presence
    assert (p.driver_id, p.online, p.reason, p.last_seen, p.ts) == (
        "drv_7", False, HEARTBEAT_TIMEOUT, at(T0), at(T0 + 15_000))
    # Checking again (a second command from the timer) changes nothing.
    assert check_heartbeat(effects.session, T0 + 20_000, RULES).outcome == "alive"


def test_a_driver_offline_by_status_is_never_timed_out():
    s = apply_status(online_at(T0), status(T0 + 1, online=False), T0 + 1, RULES).session
    assert not heartbeat_due(s, T0 + 10**9, RULES)


def test_one_heartbeat_sweep_per_partition_at_a_time():
    now = T0 + 15_000
    assert sweeps_due({4, 0, 7}, now, RULES, {}) == [0, 4, 7]
    outstanding = {0: now, 4: now}
    # The next ticks, while those two sweeps wait behind a backlog: only partition 7 is swept again.
    assert sweeps_due({0, 4, 7}, now + 2_500, RULES, outstanding) == [7]
    # A sweep unanswered for a whole heartbeat timeout is sent again.
    assert sweeps_due({0, 4, 7}, now + 15_000, RULES, outstanding) == [0, 4, 7]


def test_a_timed_out_driver_comes_back_with_its_next_ping():
    timed_out = check_heartbeat(online_at(T0), T0 + 20_000, RULES).session
    effects = apply_ping(timed_out, ping(T0 + 21_000), "4_-7", T0 + 21_000, RULES)
    assert effects.session.online is True and effects.session.offline_reason is None
    assert effects.session.assignable
    assert effects.presence.online is True and effects.presence.last_seen == at(T0 + 21_000)


def test_a_late_ping_already_past_the_timeout_does_not_bring_a_timed_out_driver_back():
    timed_out = check_heartbeat(online_at(T0), T0 + 20_000, RULES).session
    late = apply_ping(timed_out, ping(T0 + 5_000), "4_-7", T0 + 20_000, RULES)
    assert late.outcome == "accepted" and late.session.loc_ts_ms == T0 + 5_000
    assert late.session.online is False and late.presence is None
    fresh = apply_ping(late.session, ping(T0 + 19_000), "4_-7", T0 + 20_000, RULES)
    assert fresh.session.online is True and fresh.presence.online is True


def test_a_timed_out_driver_who_then_says_offline_stays_offline():
    timed_out = check_heartbeat(online_at(T0), T0 + 20_000, RULES).session
    said = apply_status(timed_out, status(T0 + 21_000, online=False), T0 + 21_000, RULES)
    assert said.presence is None and said.session.offline_reason == STATUS
    effects = apply_ping(said.session, ping(T0 + 22_000), "4_-7", T0 + 22_000, RULES)
    assert effects.session.online is False and effects.presence is None


def test_saying_online_after_a_long_break_starts_the_heartbeat_clock_afresh():
    # Last ping an hour ago, then offline; the driver comes back online: not timed out at once.
    s = apply_status(online_at(T0), status(T0 + 1000, online=False), T0 + 1000, RULES).session
    back = apply_status(s, status(T0 + 3_600_000), T0 + 3_600_000, RULES).session
    assert back.online and not heartbeat_due(back, T0 + 3_600_000 + 14_000, RULES)
    assert heartbeat_due(back, T0 + 3_600_000 + 15_000, RULES)


def test_a_driver_online_who_never_pings_is_timed_out():
    s = apply_status(None, status(T0), T0, RULES).session
    assert s.online and s.loc_ts_ms is None
    effects = check_heartbeat(s, T0 + 15_000, RULES)
    assert effects.outcome == HEARTBEAT_TIMEOUT and effects.presence.last_seen == at(T0)


def test_sessions_stored_before_last_seen_existed_use_the_last_ping():
    old = DriverSession(driver_id="drv_7", online=True, lat=NYC[0], lng=NYC[1], loc_ts_ms=T0)
    assert not heartbeat_due(old, T0 + 14_999, RULES) and heartbeat_due(old, T0 + 15_000, RULES)


# -- trips and rider tracking -------------------------------------------------------------------


def test_a_trip_makes_the_driver_unassignable_and_delivered_or_cancelled_frees_it():
    for end in ("delivered", "cancelled"):
        on_trip = apply_trip(online_at(T0), trip("order_1", "picked_up")).session
        assert on_trip.trip_id == "order_1" and not on_trip.assignable
        effects = apply_trip(on_trip, trip("order_1", end))
        assert effects.outcome == end and "order_1" in effects.session.closed_trips
        assert effects.session.trip_id is None and effects.session.assignable
        assert "order_1" in effects.session.closed_trips


def test_the_end_of_another_trip_keeps_the_current_one():
    on_trip = apply_assignment(online_at(T0), "drv_7", "order_2").session
    effects = apply_trip(on_trip, trip("order_1", "delivered"))
    assert effects.session.trip_id == "order_2" and "order_1" in effects.session.closed_trips


def test_an_assignment_after_its_trip_closed_is_ignored():
    closed = apply_trip(online_at(T0), trip("order_1", "cancelled")).session
    assert apply_assignment(closed, "drv_7", "order_1").outcome == "ignored"
    assert apply_trip(closed, trip("order_1", "picked_up")).outcome == "ignored"
    on_trip = apply_assignment(closed, "drv_7", "order_2").session
    assert apply_assignment(on_trip, "drv_7", "order_2").outcome == "ignored"


def test_only_the_last_closed_trips_are_remembered():
    s = online_at(T0)
    for i in range(CLOSED_TRIPS_KEPT + 3):
        s = apply_trip(s, trip(f"order_{i}", "delivered")).session
    assert len(s.closed_trips) == CLOSED_TRIPS_KEPT and s.closed_trips[-1] == f"order_{CLOSED_TRIPS_KEPT + 2}"


def test_tracking_is_throttled_per_booking_and_carries_only_the_contract_fields():
    s = apply_assignment(online_at(T0), "drv_7", "order_1").session
    sent = []
    for i in range(1, 11):
        ts = T0 + 1000 + i * 300
        effects = apply_ping(s, ping(ts, speed_mps=10.0, heading_deg=45.0), "4_-7", ts, UNTHROTTLED)
        s = effects.session
        if effects.tracking is not None:
            sent.append((ts, effects.tracking))
    assert [ts - T0 - 1000 for ts, _ in sent] == [300, 1500, 2700]
    update = sent[0][1]
    body = update.model_dump(mode="json")
    assert set(body) == TRACKING_FIELDS
    assert body["type"] == "driver_location_update" and body["booking_id"] == "order_1"
    assert body["speed_kmh"] == 36.0 and body["bearing"] == 45.0 and body["timestamp"].endswith("Z")
    # A new booking is not held back by the previous one's throttle.
    s = apply_trip(s, trip("order_1", "delivered")).session
    s = apply_assignment(s, "drv_7", "order_2").session
    effects = apply_ping(s, ping(T0 + 4100), "4_-7", T0 + 4100, UNTHROTTLED)
    assert effects.tracking is not None and effects.tracking.booking_id == "order_2"


def test_no_tracking_without_a_trip():
    assert apply_ping(online_at(T0), ping(T0 + 2000), "4_-7", T0 + 2000, RULES).tracking is None


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=50))
def test_tracking_never_exceeds_the_rate(gaps):
    rules = replace(RULES, min_ping_interval_ms=0)
    s = apply_assignment(online_at(T0, rules), "drv_7", "order_1").session
    ts, sent = T0, []
    for gap in gaps:
        ts += gap
        effects = apply_ping(s, ping(ts), "4_-7", ts, rules)
        s = effects.session
        if effects.tracking is not None:
            sent.append(ts)
    assert sent and sent[0] == T0 + gaps[0]
    assert all(b - a >= rules.tracking_interval_ms for a, b in zip(sent, sent[1:], strict=False))


# -- the response and the stored form ---------------------------------------------------------


def test_session_response_has_the_seed_000_shape():
    body = session_response(apply_ping(None, ping(T0, speed_mps=8.3, heading_deg=90.0), "4_-7", T0, RULES).session)
    assert set(body) == {"driver_id", "online", "last_loc", "trip_id", "eligibility"}
    assert body["last_loc"] == {"lat": NYC[0], "lng": NYC[1], "h3_res9": h3.latlng_to_cell(*NYC, 9),
                                "speed_mps": 8.3, "heading_deg": 90.0, "ts": "2026-01-15T10:30:00.000Z"}
    assert body["eligibility"] == {"ok": True, "status": "ACTIVE"}
    assert session_response(DriverSession(driver_id="drv_9"))["last_loc"] is None


def test_sessions_round_trip_and_tolerate_fields_they_do_not_know():
    s = apply_trip(online_at(T0), trip("order_1", "delivered")).session
    assert DriverSession.from_dict(s.to_dict()) == s
    data = s.to_dict() | {"added_later": 1}
    del data["last_seen_ms"]
    assert DriverSession.from_dict(data).last_seen_ms is None


def test_a_ping_that_changes_only_the_position_is_a_move_for_the_index():
    driver = online_at(T0)
    moved = apply_ping(driver, ping(T0 + 2000, lat=NYC[0] + 0.01), "4_-7", T0 + 2000, RULES).session
    assert moved_only(driver, moved)
    assert moved.h3_res9 == h3.latlng_to_cell(NYC[0] + 0.01, NYC[1], 9)


def test_a_first_position_or_a_change_of_what_the_document_shows_is_not_a_move_alone():
    said_online = apply_status(None, status(T0), T0, RULES).session
    located = apply_ping(said_online, ping(T0), "4_-7", T0, RULES).session
    assert not moved_only(None, located)
    assert not moved_only(said_online, located)  # the first position makes the driver assignable
    assert not moved_only(located, apply_assignment(located, "drv_7", "ord_1").session)
    timed_out = check_heartbeat(located, T0 + 20_000, RULES).session
    back = apply_ping(timed_out, ping(T0 + 21_000), "4_-7", T0 + 21_000, RULES).session
    assert back.online and not moved_only(timed_out, back)


def test_a_ping_from_the_same_place_keeps_the_cell_it_had():
    driver = online_at(T0)
    unlikely = replace(driver, h3_res9="a cell worked out before")
    again = apply_ping(unlikely, ping(T0 + 2000), "4_-7", T0 + 2000, RULES).session
    assert again.h3_res9 == "a cell worked out before" and again.loc_ts_ms == T0 + 2000
