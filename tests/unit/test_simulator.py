"""The simulator is deterministic for a seed, moves drivers at their speed along city blocks, and produces
exactly the malformed fraction it is asked for."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from producers.cities import CITIES
from producers.simulator import (
    SCENARIOS,
    CitySimulation,
    SimulationConfig,
    displacement_m,
    distance_m,
    offset,
    step_towards,
)
from schemas.codec import default_codec
from schemas.models import AssignmentRequested, AssignmentResponse, DriverStatus, LocationPing, TripEvent

START = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)


def run(config: SimulationConfig, seconds: float = 60, tick: float = 0.5) -> list:
    sim = CitySimulation(config, START)
    out = []
    while sim.now_s < seconds:
        out.extend(sim.advance(tick))
    return out


def encoded(records: list) -> list[bytes]:
    codec = default_codec()
    return [codec.encode(r.message) if r.message else r.malformed.value for r in records]


def test_same_seed_same_records_other_seed_other_records():
    config = SimulationConfig(CITIES["new-york"], drivers=20, orders_per_s=2, seed=42, malformed_fraction=0.1)
    assert encoded(run(config)) == encoded(run(config))
    other = SimulationConfig(CITIES["new-york"], drivers=20, orders_per_s=2, seed=43, malformed_fraction=0.1)
    assert encoded(run(config)) != encoded(run(other))


def test_every_driver_goes_online_then_pings_at_the_interval():
    config = SimulationConfig(CITIES["lagos"], drivers=5, orders_per_s=0, dropout_per_hour=0, ping_interval_s=5)
    records = [r.message for r in run(config, seconds=60)]
    online = {m.driver_id for m in records if isinstance(m, DriverStatus) and m.online}
    assert len(online) == 5
    pings = [m for m in records if isinstance(m, LocationPing)]
    by_driver: dict[str, list[datetime]] = {}
    for ping in pings:
        by_driver.setdefault(ping.driver_id, []).append(ping.ts)
    for times in by_driver.values():
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
        assert all(4.5 <= gap <= 5.5 for gap in gaps), gaps
        assert 10 <= len(times) <= 13


def test_pings_stay_in_the_city_and_report_urban_speeds():
    city = CITIES["new-york"]
    config = SimulationConfig(city, drivers=30, orders_per_s=0)
    for record in run(config, seconds=120):
        if isinstance(record.message, LocationPing):
            ping = record.message
            # waypoints are inside the city; the corner of a block-by-block path is within sqrt(2) of that
            assert distance_m(ping.lat, ping.lng, city.lat, city.lng) <= city.radius_km * 1000 * 1.42 + 50
            assert ping.speed_mps is not None and 0 <= ping.speed_mps <= city.max_speed_mps


def test_step_towards_moves_along_blocks_at_the_given_distance():
    lat, lng = 40.7128, -74.006
    target = offset(lat, lng, 300.0, 400.0)
    # 250 m: all of it east-west first
    lat2, lng2, heading, arrived = step_towards(lat, lng, *target, 250.0)
    north, east = displacement_m(lat, lng, lat2, lng2)
    assert abs(north) < 1e-6 and east == pytest.approx(250.0, abs=0.5)
    assert heading == 90.0 and not arrived
    # 300 more: the remaining 150 east, then 150 north
    lat3, lng3, heading, arrived = step_towards(lat2, lng2, *target, 300.0)
    north, east = displacement_m(lat, lng, lat3, lng3)
    assert east == pytest.approx(400.0, abs=1.0) and north == pytest.approx(150.0, abs=1.0)
    assert heading == 0.0 and not arrived
    *_, arrived = step_towards(lat3, lng3, *target, 1000.0)
    assert arrived


def test_malformed_fraction_is_honoured_and_every_fault_is_undecodable_or_invalid():
    config = SimulationConfig(CITIES["new-york"], drivers=40, orders_per_s=3, malformed_fraction=0.25, seed=7)
    records = run(config, seconds=60)
    malformed = [r.malformed for r in records if r.malformed]
    candidates = [r for r in records if r.malformed or isinstance(r.message, (LocationPing, AssignmentRequested))]
    assert 0.18 < len(malformed) / len(candidates) < 0.32
    assert {m.fault for m in malformed} >= {"not_json", "missing_field", "wrong_type", "future_ts", "no_order_id"}
    codec = default_codec()
    for bad in malformed:
        if bad.fault == "future_ts":  # valid shape, rejected by the pipeline's skew check
            ping = codec.decode(LocationPing, bad.value)
            assert (ping.ts - START).total_seconds() > 14 * 60
        elif bad.family == "locations":
            with pytest.raises(ValueError):
                codec.decode(LocationPing, bad.value)
        else:
            assert "orderId" not in orjson.loads(bad.value)


def test_an_assigned_driver_goes_to_the_restaurant_waits_and_delivers():
    config = SimulationConfig(CITIES["new-york"], drivers=1, orders_per_s=0, dropout_per_hour=0, speedup=20,
                              prep_minutes=(5, 5))
    sim = CitySimulation(config, START)
    sim.advance(10)
    driver = sim.drivers[0]
    request = sim._new_order(sim.now_s).message
    assigned = AssignmentResponse(orderId=request.orderId, status="assigned", driverId=driver.driver_id, eta=12,
                                  assignedAt=START)
    assert sim.on_response(assigned) == []
    assert sim.on_response(assigned) == []  # a repeated answer changes nothing
    assert driver.state == "on_trip"
    events = []
    for _ in range(2000):
        events += [r.message for r in sim.advance(0.5) if isinstance(r.message, TripEvent)]
        if any(e.status == "delivered" for e in events):
            break
    assert [e.status for e in events] == ["picked_up", "delivered"]
    picked_up_at = (events[0].ts - START).total_seconds()
    assert picked_up_at >= 10 + 5 * 60 / 20  # not before the food is ready
    assert sim.orders[request.orderId].picked_up_at_s == pytest.approx(picked_up_at, abs=1e-3)
    assert driver.state == "available"


def test_an_answer_naming_a_busy_driver_is_cancelled():
    config = SimulationConfig(CITIES["lagos"], drivers=1, orders_per_s=0, dropout_per_hour=0)
    sim = CitySimulation(config, START)
    sim.advance(10)
    driver = sim.drivers[0]
    first, second = sim._new_order(10).message, sim._new_order(10).message
    for request in (first, second):
        sim.on_response(AssignmentResponse(orderId=request.orderId, status="assigned", driverId=driver.driver_id,
                                           eta=10, assignedAt=START))
    assert sim.orders[second.orderId].outcome == "cancelled"
    assert sim.orders[first.orderId].outcome == "assigned"


def requests_of(records: list) -> list[AssignmentRequested]:
    return [r.message for r in records if isinstance(r.message, AssignmentRequested)]


def test_a_rush_adds_its_orders_at_one_restaurant_and_leaves_the_citys_own_as_they_were():
    city = CITIES["new-york"]
    plain = requests_of(run(SimulationConfig(city, drivers=5, orders_per_s=2, seed=3), seconds=40))
    rushed = requests_of(run(SimulationConfig(city, drivers=5, orders_per_s=2, seed=3, scenario=SCENARIOS["rush"]),
                             seconds=40))
    rush = SCENARIOS["rush"].rush
    spot = offset(city.lat, city.lng, rush.north_km * 1000, rush.east_km * 1000)
    at_spot = [r for r in rushed if distance_m(r.restaurantLatitude, r.restaurantLongitude, *spot) < 1]
    assert len(at_spot) == rush.orders
    assert {round(r.restaurantLatitude, 6) for r in at_spot} == {round(spot[0], 6)}
    times = sorted((datetime.fromisoformat(r.occurredAt) - START).total_seconds() for r in at_spot)
    assert rush.at_s <= times[0] and times[-1] < rush.at_s + rush.over_s + 0.5
    own = [(r.restaurantLatitude, r.restaurantLongitude, r.preparationTime) for r in rushed if r not in at_spot]
    assert own == [(r.restaurantLatitude, r.restaurantLongitude, r.preparationTime) for r in plain]


def test_a_shortage_sends_its_share_of_orders_to_the_district():
    city, scenario = CITIES["new-york"], SCENARIOS["shortage"]
    hotspot = scenario.hotspot
    requests = requests_of(run(SimulationConfig(city, drivers=1, orders_per_s=20, seed=5, scenario=scenario),
                               seconds=30))
    centre = offset(city.lat, city.lng, hotspot.north_km * 1000, hotspot.east_km * 1000)
    inside = sum(distance_m(r.restaurantLatitude, r.restaurantLongitude, *centre) <= hotspot.radius_km * 1000 + 1
                 for r in requests)
    assert len(requests) > 400
    # The share, and the few orders of the rest of the city that fall in the district by chance.
    assert 0.45 < inside / len(requests) < 0.58


def test_a_trip_of_one_driver_leaves_every_other_drivers_moves_as_they_were():
    config = SimulationConfig(CITIES["london"], drivers=6, orders_per_s=0, seed=11, speedup=5)
    idle, busy = CitySimulation(config, START), CitySimulation(config, START)
    for sim in (idle, busy):
        sim.advance(10)
    request = busy._new_order(busy.now_s).message
    taken = busy.drivers[0]
    busy.on_response(AssignmentResponse(orderId=request.orderId, status="assigned", driverId=taken.driver_id, eta=9,
                                        assignedAt=START))
    for _ in range(120):
        idle.advance(0.5)
        busy.advance(0.5)
    assert [(d.lat, d.lng) for d in idle.drivers[1:]] == [(d.lat, d.lng) for d in busy.drivers[1:]]
    assert (idle.drivers[0].lat, idle.drivers[0].lng) != (taken.lat, taken.lng)
