"""A deterministic city: drivers come online, drive block by block at urban speeds, ping, lose signal now and
then, accept and finish trips; orders arrive at a rate. Pure: it advances a virtual clock and returns the
records to send, so the same seed and the same answers give the same records; the runner does the I/O."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import orjson

from producers.cities import City
from schemas.models import (
    AssignmentRequested,
    AssignmentResponse,
    BookingOwner,
    DriverStatus,
    LocationPing,
    Message,
    TripEvent,
    iso_utc,
)

METRES_PER_DEGREE = 111_320.0
EARTH_RADIUS_M = 6_371_000.0
# Malformed pings: three the pipeline can never process (InvalidMessage) and one it rejects only because
# of its event time (InvalidEvent: "in the future"), which an operator can fix and replay.
PING_FAULTS = ("not_json", "missing_field", "wrong_type", "future_ts")
REQUEST_FAULTS = ("no_order_id",)
FUTURE_SKEW = timedelta(minutes=15)
ARRIVAL_TOLERANCE_M = 1.0
# The riders the orders are booked by, in turn: a rider follows several of a run's bookings.
RIDERS = 1000

DriverState = Literal["offline", "available", "on_trip", "silent"]


# -- geometry (equirectangular: exact enough within a city) -------------------------------------------------


def offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    return lat + north_m / METRES_PER_DEGREE, lng + east_m / (METRES_PER_DEGREE * math.cos(math.radians(lat)))


def displacement_m(lat: float, lng: float, to_lat: float, to_lng: float) -> tuple[float, float]:
    """(north, east) metres from one point to another."""
    return (to_lat - lat) * METRES_PER_DEGREE, (to_lng - lng) * METRES_PER_DEGREE * math.cos(math.radians(lat))


def distance_m(lat: float, lng: float, to_lat: float, to_lng: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat), math.radians(to_lat)
    dp, dl = p2 - p1, math.radians(to_lng - lng)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def point_in_disk(rng: random.Random, lat: float, lng: float, radius_m: float) -> tuple[float, float]:
    """Uniform over the disk's area (sqrt), not bunched at its centre."""
    r = radius_m * math.sqrt(rng.random())
    theta = rng.uniform(0, 2 * math.pi)
    return offset(lat, lng, r * math.cos(theta), r * math.sin(theta))


def step_towards(
    lat: float, lng: float, to_lat: float, to_lng: float, metres: float
) -> tuple[float, float, float, bool]:
    """Moves along city blocks: east-west first, then north-south. Returns lat, lng, heading, arrived."""
    heading = 0.0
    north, east = displacement_m(lat, lng, to_lat, to_lng)
    if abs(east) > ARRIVAL_TOLERANCE_M and metres > 0:
        moved = min(metres, abs(east))
        lat, lng = offset(lat, lng, 0.0, math.copysign(moved, east))
        heading = 90.0 if east > 0 else 270.0
        metres -= moved
        north, east = displacement_m(lat, lng, to_lat, to_lng)
    if abs(east) <= ARRIVAL_TOLERANCE_M and abs(north) > ARRIVAL_TOLERANCE_M and metres > 0:
        moved = min(metres, abs(north))
        lat, lng = offset(lat, lng, math.copysign(moved, north), 0.0)
        heading = 0.0 if north > 0 else 180.0
        north, east = displacement_m(lat, lng, to_lat, to_lng)
    arrived = abs(north) <= ARRIVAL_TOLERANCE_M and abs(east) <= ARRIVAL_TOLERANCE_M
    return lat, lng, heading, arrived


# -- the simulation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hotspot:
    """A district, this far from the city centre, where `share` of the orders arrive: more than its
    drivers can serve when the share is well above the district's part of the city."""

    north_km: float
    east_km: float
    radius_km: float
    share: float


@dataclass(frozen=True)
class Rush:
    """A burst at one restaurant, this far from the city centre: `orders` more orders, evenly over
    `over_s` seconds from `at_s`, beside the city's own."""

    north_km: float
    east_km: float
    at_s: float
    orders: int
    over_s: float


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    hotspot: Hotspot | None = None
    rush: Rush | None = None


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("balanced", "orders spread over the whole city, like its drivers"),
        Scenario("shortage", "half the orders in one district of 1.2 km around a point 3.5 km from the centre, "
                             "where a few percent of the drivers are",
                 hotspot=Hotspot(north_km=2.5, east_km=2.5, radius_km=1.2, share=0.5)),
        Scenario("rush", "the city's orders, and 60 more at one restaurant within 6 s from t = 20 s",
                 rush=Rush(north_km=1.0, east_km=-1.0, at_s=20.0, orders=60, over_s=6.0)),
    )
}


@dataclass(frozen=True)
class SimulationConfig:
    city: City
    drivers: int = 50
    orders_per_s: float = 1.0
    ping_interval_s: float = 5.0
    dropout_per_hour: float = 3.0
    # Long enough for the pipeline's heartbeat timeout to notice, short enough to come back in a demo.
    dropout_s: tuple[float, float] = (20.0, 60.0)
    malformed_fraction: float = 0.0
    speedup: float = 1.0
    seed: int = 1
    # Drivers come online spread over this many seconds.
    online_ramp_s: float = 5.0
    # Part of every driver and order id, so that two runs on one broker do not inherit each other's trips.
    run_id: str = ""
    prep_minutes: tuple[int, int] = (3, 20)
    customer_km: tuple[float, float] = (0.5, 4.0)
    radii_km: tuple[float, ...] = (3.0, 5.0, 5.0, 5.0, 8.0)
    scenario: Scenario = SCENARIOS["balanced"]


@dataclass(frozen=True)
class Malformed:
    """A deliberately broken record: raw bytes for a topic family of the city's region."""

    fault: str
    family: Literal["locations", "requests"]
    region: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Outgoing:
    """One record to send: a valid contract message, or a malformed one."""

    message: Message | None = None
    malformed: Malformed | None = None


@dataclass
class Order:
    order_id: str
    restaurant: tuple[float, float]
    customer: tuple[float, float]
    prep_minutes: int
    radius_km: float
    requested_at_s: float
    outcome: str = "pending"
    driver_id: str | None = None
    driver_at_assignment: tuple[float, float] | None = None
    eta_min: int | None = None
    error: str | None = None
    picked_up_at_s: float | None = None


@dataclass
class Trip:
    order: Order
    ready_at_s: float
    picked_up: bool = False


@dataclass
class Driver:
    driver_id: str
    lat: float
    lng: float
    speed_mps: float
    accuracy_m: float
    online_at_s: float
    next_ping_at_s: float
    # The driver's own random stream (wandering, signal loss, GPS noise): a trip one driver takes in one
    # run and not in another leaves every other driver's moves the same.
    rng: random.Random = field(repr=False, compare=False, default_factory=random.Random)
    online: bool = False
    heading_deg: float = 0.0
    silent_until_s: float | None = None
    waypoint: tuple[float, float] | None = None
    trip: Trip | None = None

    @property
    def state(self) -> DriverState:
        if not self.online:
            return "offline"
        if self.silent_until_s is not None:
            return "silent"
        return "on_trip" if self.trip else "available"


@dataclass
class Counts:
    pings: int = 0
    statuses: int = 0
    requests: int = 0
    trip_events: int = 0
    dropouts: int = 0
    assigned: int = 0
    failed: int = 0
    declined: int = 0
    picked_up: int = 0
    delivered: int = 0
    malformed: dict[str, int] = field(default_factory=dict)


class CitySimulation:
    """Advance it with `advance(seconds)`, feed it the pipeline's answers with `on_response`."""

    def __init__(self, config: SimulationConfig, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must carry a time zone")
        self.config = config
        self.city = config.city
        self.start = start.astimezone(UTC)
        self.now_s = 0.0
        self.counts = Counts()
        # Independent streams: orders do not shift when a trip changes a driver's path, nor faults either.
        self._drivers_rng = random.Random(f"{config.seed}:drivers")
        self._orders_rng = random.Random(f"{config.seed}:orders")
        self._rush_rng = random.Random(f"{config.seed}:rush")
        self._faults_rng = random.Random(f"{config.seed}:faults")
        self.drivers = [self._new_driver(number) for number in range(config.drivers)]
        self._by_id = {driver.driver_id: driver for driver in self.drivers}
        self.orders: dict[str, Order] = {}
        self._order_number = 0
        self._next_order_at_s = self._order_gap()
        rush = config.scenario.rush
        self._rush_times = [rush.at_s + n * rush.over_s / rush.orders for n in range(rush.orders)] if rush else []

    # -- set-up ----------------------------------------------------------------------------------------

    def _new_driver(self, number: int) -> Driver:
        rng, city = self._drivers_rng, self.city
        lat, lng = point_in_disk(rng, city.lat, city.lng, city.radius_km * 1000)
        online_at = rng.uniform(0, self.config.online_ramp_s)
        return Driver(
            driver_id=f"{city.slug}-drv-{self.config.run_id}{number:04d}",
            lat=lat,
            lng=lng,
            speed_mps=rng.uniform(city.min_speed_mps, city.max_speed_mps),
            accuracy_m=rng.uniform(3.0, 10.0),
            online_at_s=online_at,
            next_ping_at_s=online_at,
            rng=random.Random(f"{self.config.seed}:driver:{number}"),
        )

    def _order_gap(self) -> float:
        rate = self.config.orders_per_s
        return self._orders_rng.expovariate(rate) if rate > 0 else math.inf

    def timestamp(self, at_s: float | None = None) -> datetime:
        return self.start + timedelta(seconds=self.now_s if at_s is None else at_s)

    # -- the clock -------------------------------------------------------------------------------------

    def advance(self, seconds: float) -> list[Outgoing]:
        """Moves the city forward; returns what was said in that time, in event-time order per driver."""
        if seconds <= 0:
            raise ValueError("time only moves forward")
        self.now_s += seconds
        out: list[Outgoing] = []
        for driver in self.drivers:
            out.extend(self._advance_driver(driver, seconds))
        while True:
            rush_at = self._rush_times[0] if self._rush_times else math.inf
            if min(self._next_order_at_s, rush_at) > self.now_s:
                return out
            if rush_at < self._next_order_at_s:
                self._rush_times.pop(0)
                out.extend(self._booking(rush_at, rush=True))
            else:
                out.extend(self._booking(self._next_order_at_s))
                self._next_order_at_s += self._order_gap()

    def stop_orders(self) -> None:
        """No order arrives after now: the trips under way go on (a comparison's last pickups)."""
        self._next_order_at_s = math.inf
        self._rush_times.clear()

    def awaiting_pickup(self) -> int:
        """Trips whose driver has not picked the order up yet."""
        return sum(1 for d in self.drivers if d.trip is not None and not d.trip.picked_up)

    def _advance_driver(self, driver: Driver, seconds: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        if not driver.online:
            if self.now_s < driver.online_at_s:
                return out
            driver.online = True
            out.append(self._status(driver, online=True))
        if driver.silent_until_s is not None and self.now_s >= driver.silent_until_s:
            # Back in coverage: the pipeline has marked it offline by now, so it says it is online again.
            driver.silent_until_s = None
            driver.next_ping_at_s = self.now_s
            out.append(self._status(driver, online=True))
        out.extend(self._move(driver, seconds))
        if driver.state == "available" and driver.rng.random() < self.config.dropout_per_hour / 3600 * seconds:
            driver.silent_until_s = self.now_s + driver.rng.uniform(*self.config.dropout_s)
            self.counts.dropouts += 1
        if driver.silent_until_s is None and self.now_s >= driver.next_ping_at_s:
            out.append(self._ping(driver))
            driver.next_ping_at_s += self.config.ping_interval_s
            # A driver that fell behind (a long pause) pings once, not a burst.
            driver.next_ping_at_s = max(driver.next_ping_at_s, self.now_s)
        return out

    def _move(self, driver: Driver, seconds: float) -> list[Outgoing]:
        if driver.waypoint is None:
            driver.waypoint = self._wander_target(driver)
        trip = driver.trip
        if trip is not None and trip.picked_up is False and driver.waypoint == trip.order.restaurant \
                and self._at(driver, trip.order.restaurant):
            return self._maybe_pick_up(driver, trip)
        metres = driver.speed_mps * seconds * self.config.speedup
        driver.lat, driver.lng, heading, arrived = step_towards(driver.lat, driver.lng, *driver.waypoint, metres)
        if metres > 0:
            driver.heading_deg = heading
        if not arrived:
            return []
        if trip is None:
            driver.waypoint = self._wander_target(driver)
            return []
        if not trip.picked_up:
            return self._maybe_pick_up(driver, trip)
        return self._deliver(driver, trip)

    @staticmethod
    def _at(driver: Driver, point: tuple[float, float]) -> bool:
        north, east = displacement_m(driver.lat, driver.lng, *point)
        return abs(north) <= ARRIVAL_TOLERANCE_M and abs(east) <= ARRIVAL_TOLERANCE_M

    def _maybe_pick_up(self, driver: Driver, trip: Trip) -> list[Outgoing]:
        if self.now_s < trip.ready_at_s:
            return []  # waiting at the restaurant for the food
        trip.picked_up = True
        trip.order.picked_up_at_s = self.now_s
        driver.waypoint = trip.order.customer
        self.counts.picked_up += 1
        return [self._trip_event(driver, trip.order, "picked_up")]

    def _deliver(self, driver: Driver, trip: Trip) -> list[Outgoing]:
        driver.trip = None
        driver.waypoint = self._wander_target(driver)
        trip.order.outcome = "delivered"
        self.counts.delivered += 1
        return [self._trip_event(driver, trip.order, "delivered")]

    def _wander_target(self, driver: Driver) -> tuple[float, float]:
        """A point up to 1.5 km away that stays within the city."""
        city = self.city
        for _ in range(10):
            lat, lng = point_in_disk(driver.rng, driver.lat, driver.lng, 1500.0)
            if distance_m(lat, lng, city.lat, city.lng) <= city.radius_km * 1000:
                return lat, lng
        return point_in_disk(driver.rng, city.lat, city.lng, city.radius_km * 1000)

    # -- answers from the pipeline ---------------------------------------------------------------------

    def on_response(self, response: AssignmentResponse) -> list[Outgoing]:
        """Applies an answer once (a repeated answer changes nothing); returns any trip event it causes."""
        order = self.orders.get(response.orderId)
        if order is None or order.outcome != "pending":
            return []
        if response.status == "failed":
            order.outcome = "failed"
            order.error = response.error
            self.counts.failed += 1
            return []
        order.outcome = "assigned"
        order.driver_id = response.driverId
        order.eta_min = response.eta
        self.counts.assigned += 1
        driver = self._by_id.get(response.driverId or "")
        if driver is None:
            return []  # not one of ours (another simulator on the same topics)
        order.driver_at_assignment = (driver.lat, driver.lng)
        if driver.state != "available":
            # Lost signal or already busy: the order service would reassign; we free the driver.
            order.outcome = "cancelled"
            self.counts.declined += 1
            return [self._trip_event(driver, order, "cancelled")]
        ready_at = order.requested_at_s + order.prep_minutes * 60 / self.config.speedup
        driver.trip = Trip(order, ready_at_s=ready_at)
        driver.waypoint = order.restaurant
        return []

    # -- records ---------------------------------------------------------------------------------------

    def _status(self, driver: Driver, online: bool) -> Outgoing:
        self.counts.statuses += 1
        return Outgoing(DriverStatus(driver_id=driver.driver_id, online=online, eligibility="ACTIVE",
                                     ts=self.timestamp()))

    def _ping(self, driver: Driver) -> Outgoing:
        self.counts.pings += 1
        rng = driver.rng
        # GPS noise of about the reported accuracy.
        noise = driver.accuracy_m / 2
        lat, lng = offset(driver.lat, driver.lng, rng.gauss(0, noise), rng.gauss(0, noise))
        moving = driver.state == "on_trip" or driver.waypoint is not None
        ping = LocationPing(
            driver_id=driver.driver_id, lat=round(lat, 6), lng=round(lng, 6),
            speed_mps=round(driver.speed_mps if moving else 0.0, 2), heading_deg=driver.heading_deg,
            accuracy_m=round(driver.accuracy_m, 1), ts=self.timestamp(),
        )
        if self._faults_rng.random() < self.config.malformed_fraction:
            return Outgoing(malformed=self._malformed_ping(ping))
        return Outgoing(ping)

    def _malformed_ping(self, ping: LocationPing) -> Malformed:
        fault = self._faults_rng.choice(PING_FAULTS)
        document = ping.model_dump(mode="json", exclude_none=True)
        if fault == "not_json":
            value = orjson.dumps(document)[:-9]
        elif fault == "missing_field":
            document.pop("lat")
            value = orjson.dumps(document)
        elif fault == "wrong_type":
            document["lat"] = str(document["lat"])
            value = orjson.dumps(document)
        else:
            document["ts"] = iso_utc(ping.ts + FUTURE_SKEW)
            value = orjson.dumps(document)
        self.counts.malformed[fault] = self.counts.malformed.get(fault, 0) + 1
        return Malformed(fault, "locations", self.city.region, ping.driver_id.encode(), value)

    def _restaurant(self) -> tuple[float, float]:
        """Where the next order of the city's own comes from: its hotspot, or anywhere in the city."""
        rng, city, hotspot = self._orders_rng, self.city, self.config.scenario.hotspot
        if hotspot is not None and rng.random() < hotspot.share:
            centre = offset(city.lat, city.lng, hotspot.north_km * 1000, hotspot.east_km * 1000)
            return point_in_disk(rng, *centre, hotspot.radius_km * 1000)
        return point_in_disk(rng, city.lat, city.lng, city.radius_km * 1000 * 0.8)

    def _rush_restaurant(self) -> tuple[float, float]:
        rush, city = self.config.scenario.rush, self.city
        assert rush is not None
        return offset(city.lat, city.lng, rush.north_km * 1000, rush.east_km * 1000)

    def _booking(self, at_s: float, rush: bool = False) -> list[Outgoing]:
        """A new order as the order service publishes it: who booked it (booking_owners, what the
        real-time gateway lets its rider follow it by), then the request for a driver."""
        request = self._new_order(at_s, rush)
        order_id = next(reversed(self.orders))
        rider = f"{self.city.slug}-rider-{self._order_number % RIDERS:04d}"
        return [Outgoing(BookingOwner(booking_id=order_id, user_id=rider, ts=self.timestamp(at_s))), request]

    def _new_order(self, at_s: float, rush: bool = False) -> Outgoing:
        """An order of the city's own, or of its rush (a stream of its own, so the city's orders are
        the same with or without one)."""
        city, config = self.city, self.config
        rng, restaurant = (self._rush_rng, self._rush_restaurant()) if rush else (self._orders_rng, self._restaurant())
        self._order_number += 1
        order_id = f"{city.slug}-ord-{config.run_id}{config.seed}-{self._order_number:06d}"
        distance = rng.uniform(*config.customer_km) * 1000
        bearing = rng.uniform(0, 2 * math.pi)
        customer = offset(*restaurant, distance * math.cos(bearing), distance * math.sin(bearing))
        order = Order(
            order_id=order_id,
            restaurant=(round(restaurant[0], 6), round(restaurant[1], 6)),
            customer=(round(customer[0], 6), round(customer[1], 6)),
            prep_minutes=rng.randint(*config.prep_minutes),
            radius_km=rng.choice(config.radii_km),
            requested_at_s=at_s,
        )
        items = [{"name": rng.choice(("burger", "jollof rice", "pizza", "salad", "suya", "noodles")),
                  "quantity": rng.randint(1, 3)} for _ in range(rng.randint(1, 3))]
        request = AssignmentRequested(
            eventId=f"{order_id}:requested", eventType="AssignmentRequested", occurredAt=iso_utc(self.timestamp(at_s)),
            orderId=order_id, geoKey=city.region,
            restaurantLatitude=order.restaurant[0], restaurantLongitude=order.restaurant[1],
            customerLatitude=order.customer[0], customerLongitude=order.customer[1],
            preparationTime=order.prep_minutes, radius=order.radius_km, items=items,
            totalAmount=round(rng.uniform(8, 80), 2),
        )
        self.counts.requests += 1
        if self._faults_rng.random() < config.malformed_fraction:
            document = request.model_dump(mode="json", exclude_none=True)
            document.pop("orderId")
            self.counts.malformed["no_order_id"] = self.counts.malformed.get("no_order_id", 0) + 1
            order.outcome = "malformed"
            self.orders[order_id] = order
            return Outgoing(malformed=Malformed("no_order_id", "requests", city.region, order_id.encode(),
                                                orjson.dumps(document)))
        self.orders[order_id] = order
        return Outgoing(request)

    def _trip_event(self, driver: Driver, order: Order, status: str) -> Outgoing:
        self.counts.trip_events += 1
        return Outgoing(TripEvent(orderId=order.order_id, driverId=driver.driver_id, status=status,
                                  ts=self.timestamp()))

    # -- views -----------------------------------------------------------------------------------------

    def driver_states(self) -> dict[str, int]:
        states: dict[str, int] = {"offline": 0, "available": 0, "on_trip": 0, "silent": 0}
        for driver in self.drivers:
            states[driver.state] += 1
        return states

    def snapshot(self) -> dict:
        """Where everyone is and what happened to every order, for the pictures."""
        return {
            "city": {"slug": self.city.slug, "name": self.city.name, "lat": self.city.lat, "lng": self.city.lng,
                     "radius_km": self.city.radius_km},
            "drivers": [{"driver_id": d.driver_id, "lat": d.lat, "lng": d.lng, "state": d.state}
                        for d in self.drivers],
            "orders": [
                {"order_id": o.order_id, "restaurant": o.restaurant, "customer": o.customer, "outcome": o.outcome,
                 "driver_id": o.driver_id, "driver_at_assignment": o.driver_at_assignment, "eta_min": o.eta_min,
                 "error": o.error, "requested_at_s": o.requested_at_s, "picked_up_at_s": o.picked_up_at_s}
                for o in self.orders.values()
            ],
        }
