"""Assignment against the real broker and Redis: seed-003 requests in, driver_assignment.responses out."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
import redis

from streams.logic.sessions import CLOSED_TRIPS_KEPT
from streams.routing import key_partition
from tests.integration.harness import wait_for

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)

RESTAURANT = (40.7128, -74.006)
CUSTOMER = (40.7589, -73.9851)
KM_NORTH = 1 / 111.195  # degrees of latitude per kilometre


def iso(offset_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat()


def request(order_id: str, lat: float = RESTAURANT[0], lng: float = RESTAURANT[1], **extra) -> bytes:
    body = {
        "eventId": f"evt-{order_id}", "eventType": "AssignmentRequested", "occurredAt": iso(), "orderId": order_id,
        "geoKey": "4_-7", "restaurantLatitude": lat, "restaurantLongitude": lng,
        "customerLatitude": CUSTOMER[0], "customerLongitude": CUSTOMER[1], "preparationTime": 10, "radius": 5,
        "items": [{"name": "pizza", "quantity": 1}], "totalAmount": 34.97, "specialInstructions": "front door",
    }
    body.update(extra)
    return json.dumps(body).encode()


class City:
    """Drivers put in place through the real topics, and requests answered through them."""

    def __init__(self, deployment, worker):
        self.dep = deployment
        self.worker = worker

    def driver(self, driver_id: str, km_north: float, online: bool = True, eligibility: str = "ACTIVE",
               ping_age_s: float = 0) -> None:
        names = self.dep.names
        status = {"driver_id": driver_id, "online": online, "eligibility": eligibility, "ts": iso(-ping_age_s - 1)}
        ping = {"driver_id": driver_id, "lat": RESTAURANT[0] + km_north * KM_NORTH, "lng": RESTAURANT[1],
                "ts": iso(-ping_age_s)}
        self.dep.produce(names.status, [(driver_id.encode(), json.dumps(status).encode())])
        self.dep.produce(names.locations("4_-7"), [(driver_id.encode(), json.dumps(ping).encode())])
        wait_for(lambda: self.session(driver_id).get("online") == online
                 and (self.session(driver_id).get("last_loc") or {}).get("lat") == ping["lat"],
                 message=f"{driver_id}'s session")

    def session(self, driver_id: str) -> dict:
        status, body = self.worker.get(f"/driver-sessions/sessions/{driver_id}")
        return body if status == 200 else {}

    def trip(self, driver_id: str, order_id: str, status: str) -> None:
        event = {"orderId": order_id, "driverId": driver_id, "status": status, "ts": iso()}
        self.dep.produce(self.dep.names.trip_events, [(driver_id.encode(), json.dumps(event).encode())])

    def ask(self, order_id: str, body: bytes | None = None) -> None:
        self.dep.produce(self.dep.names.requests("4_-7"), [(order_id.encode(), body or request(order_id))])

    def answers(self, count: int, timeout: float = 30) -> dict[str, list[dict]]:
        by_order: dict[str, list[dict]] = defaultdict(list)
        for record in self.dep.read(self.dep.names.responses, count, timeout):
            answer = json.loads(record.value)
            assert record.key == answer["orderId"].encode()
            by_order[answer["orderId"]].append(answer)
        return by_order

    def answer(self, order_id: str, total: int) -> dict:
        answers = self.answers(total)[order_id]
        assert len(answers) == 1, answers
        return answers[0]


@pytest.fixture
def city(deployment):
    deployment.extra_env.update(GEODISPATCH_MISSED_HEARTBEATS="1000", GEODISPATCH_LOCATION_MAX_AGE_S="60")
    worker = deployment.start_worker()
    worker.wait_ready()
    return City(deployment, worker)


def unsuitable_and_suitable_drivers(city: City) -> None:
    """Four drivers right at the restaurant whom no request may get (suspended, offline, on a trip, not
    heard from for too long), `first` 1 km away, `second` 2 km away and `too_far` outside the radius."""
    city.driver("suspended", 0.1, eligibility="SUSPENDED")
    city.driver("offline", 0.1, online=False)
    city.driver("busy", 0.1)
    city.trip("busy", "earlier_order", "picked_up")
    wait_for(lambda: city.session("busy").get("trip_id") == "earlier_order", message="busy's trip")
    city.driver("stale", 0.1, ping_age_s=120)
    city.driver("second", 2.0)
    city.driver("first", 1.0)
    city.driver("too_far", 6.0)


def test_the_best_suitable_driver_wins_and_unsuitable_ones_never_do(city):
    unsuitable_and_suitable_drivers(city)

    city.ask("order_1")
    first = city.answer("order_1", 1)
    assert set(first) == {"orderId", "driverId", "eta", "assignedAt", "status"}
    assert first["status"] == "assigned" and first["driverId"] == "first"
    # 1 km at 30 km/h is 2 min, the food takes 10, then 5.4 km to the customer (10.8 min): 20.8 -> 21.
    assert first["eta"] == 21
    assert wait_for(lambda: city.session("first").get("trip_id") == "order_1", message="first's trip")

    city.ask("order_2")
    assert city.answer("order_2", 2)["driverId"] == "second"

    city.ask("order_3")
    third = city.answer("order_3", 3)
    assert set(third) == {"orderId", "error", "failedAt", "status"}
    assert third["status"] == "failed" and third["error"] == "No available drivers in area"


def test_bad_coordinates_are_answered_and_garbage_is_dead_lettered(city):
    city.ask("bad_lat", request("bad_lat", lat=91.5))
    city.ask("bad_type", request("bad_type", lng="-74.0"))
    city.dep.produce(city.dep.names.requests("4_-7"), [(b"junk", b"\x00\x00\x00\x00\x03garbage")])
    city.dep.produce(city.dep.names.requests("4_-7"), [(b"no-order", json.dumps({"radius": 5}).encode())])
    answers = city.answers(2)
    for order_id in ("bad_lat", "bad_type"):
        assert [a["error"] for a in answers[order_id]] == ["Invalid coordinates"]
        assert answers[order_id][0]["status"] == "failed"
    letters = city.dep.read(city.dep.names.dlq, 2)
    assert sorted(letter.key for letter in letters) == [b"junk", b"no-order"]


def test_an_empty_area_gets_the_seeds_failure(city):
    city.ask("lonely", request("lonely", lat=6.5244, lng=3.3792))
    answer = city.answer("lonely", 1)
    assert answer["status"] == "failed" and answer["error"] == "No available drivers in area"


def test_the_same_request_three_times_gets_one_driver_three_identical_answers(city):
    city.driver("only", 0.5)
    city.driver("other", 0.8)
    for _ in range(3):
        city.ask("order_once")
    answers = city.answers(3)["order_once"]
    assert len(answers) == 3
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["driverId"] == "only"
    client = city.dep.redis()
    holders = [key for key in client.scan_iter(f"{city.dep.redis_prefix}r:*") if client.get(key) == "order_once"]
    assert holders == [city.dep.redis_keys.reservation("only")]
    assert city.session("other")["trip_id"] is None


def test_a_decision_whose_worker_died_before_the_trip_command_still_gives_the_driver_the_trip(city):
    """A worker killed after its decision reached the decisions changelog, with the reservation made,
    but before the answer and the driver's trip command were sent (seen in a worker-kill run). Its
    successor answers the redelivered request from the table, and must tell the driver's session of
    the trip too: otherwise the driver stays reserved while its session shows no trip, and the
    rider gets no tracking."""
    dep, order = city.dep, "order_cut_short"
    city.driver("kept", 0.5)
    city.worker.stop()
    decision = {"orderId": order, "driverId": "kept", "eta": 3, "assignedAt": iso(), "status": "assigned"}
    changelog = f"{dep.prefix}geodispatch-assignment_decisions-changelog"
    dep.produce(changelog, [(order.encode(), json.dumps(decision).encode())],
                partition=key_partition(order.encode(), dep.partitions))
    dep.redis().set(dep.redis_keys.reservation("kept"), order)

    city.worker = dep.start_worker("w2")  # a new data directory: the decision comes from the changelog
    city.worker.wait_ready(timeout=90)
    city.ask(order)
    assert city.answer(order, 1)["driverId"] == "kept"
    wait_for(lambda: city.session("kept").get("trip_id") == order, message="the driver's session hears of the trip")


def test_a_delivered_driver_is_assignable_again(city):
    city.driver("loop", 0.3)
    city.ask("trip_a")
    assert city.answer("trip_a", 1)["driverId"] == "loop"
    wait_for(lambda: city.session("loop").get("trip_id") == "trip_a", message="the trip recorded")
    city.trip("loop", "trip_a", "delivered")
    wait_for(lambda: city.session("loop").get("trip_id") is None, message="the driver freed")
    city.ask("trip_b")
    assert city.answer("trip_b", 2)["driverId"] == "loop"


def test_a_request_answered_again_after_its_trip_closed_does_not_send_the_driver_back(city):
    """Seen in a failover run (static membership, a worker that never came back): the new owner read again
    a request decided just before the kill, after its driver had done more trips than a session
    remembers (CLOSED_TRIPS_KEPT), and the repeated answer's assign put him back on the delivered order.
    A decision made before sends its trip only while the driver's reservation still holds the order."""
    orders = [f"round_{n}" for n in range(CLOSED_TRIPS_KEPT + 1)]
    city.driver("loop", 0.3)
    for n, order in enumerate(orders, start=1):
        city.ask(order)
        assert city.answer(order, n)["driverId"] == "loop"
        wait_for(lambda o=order: city.session("loop").get("trip_id") == o, message=f"{order} recorded")
        city.trip("loop", order, "delivered")
        wait_for(lambda: city.session("loop").get("trip_id") is None, message=f"{order} delivered")
    city.ask(orders[0])  # a redelivery, or an operator's replay, long after
    again = city.answers(len(orders) + 1)[orders[0]]
    assert len(again) == 2 and again[0] == again[1]
    city.ask("after_the_replay")
    assert city.answer("after_the_replay", len(orders) + 2)["driverId"] == "loop"
    wait_for(lambda: city.session("loop").get("trip_id") == "after_the_replay", message="the next trip recorded")
    commands = [json.loads(r.value) for r in city.dep.read(city.dep.names.driver_commands, len(orders) + 2, 3)]
    assert [c["order_id"] for c in commands if c["kind"] == "assign"] == [*orders, "after_the_replay"]


def test_an_answer_is_stamped_when_its_driver_was_reserved_not_when_the_request_arrived(city):
    """Seen in a Redis-restart run: a request that arrived while Redis was away was decided after its
    retries, once the driver had finished its earlier trip, but its assignedAt was the arrival time,
    from before that trip ended, so the answer claimed the driver held two orders at once. Redis
    paused here holds the decision back the same way."""
    city.driver("patient", 0.5)
    client = city.dep.redis()
    paused_until = datetime.now(UTC) + timedelta(seconds=3)
    nodes = {"target_nodes": redis.RedisCluster.ALL_NODES} if isinstance(client, redis.RedisCluster) else {}
    client.execute_command("CLIENT", "PAUSE", 3000, "ALL", **nodes)
    city.ask("order_held_back")
    answer = city.answer("order_held_back", 1)
    assert answer["driverId"] == "patient"
    assert datetime.fromisoformat(answer["assignedAt"].replace("Z", "+00:00")) >= paused_until - timedelta(
        seconds=0.05
    )


def test_two_workers_never_give_one_driver_two_open_orders(deployment):
    deployment.partitions = 2
    deployment.extra_env.update(GEODISPATCH_MISSED_HEARTBEATS="1000")
    first = deployment.start_worker("a")
    first.wait_ready()
    city = City(deployment, first)
    for index in range(3):
        city.driver(f"pool_{index}", 0.2 + index * 0.3)
    second = deployment.start_worker("b")
    second.wait_ready()
    # Both workers have joined the group once each has rebuilt after the rebalance.
    wait_for(lambda: all(w.get("/stats")[1]["index"]["epoch"] for w in (first, second)), message="both ready")
    orders = [f"rush_{n}" for n in range(20)]
    deployment.produce(deployment.names.requests("4_-7"), [(o.encode(), request(o)) for o in orders])
    answers = city.answers(len(orders), timeout=60)
    assert sorted(answers) == sorted(orders)
    assert all(len(answers[o]) == 1 for o in orders), answers
    assigned = [answers[o][0]["driverId"] for o in orders if answers[o][0]["status"] == "assigned"]
    assert sorted(assigned) == ["pool_0", "pool_1", "pool_2"]
