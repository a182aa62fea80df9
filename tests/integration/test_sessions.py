"""Driver sessions end to end on the real broker and Redis: online, pings, nearby, offline by status
and by missed heartbeats, trips with throttled rider tracking, rerouting and region crossing."""

from __future__ import annotations

import json
from datetime import timedelta

import h3
import pytest

from schemas import DriverStatus, LocationPing, default_codec
from schemas import dead_letter as dl
from streams.routing import key_partition
from tests.integration.drivers import (
    LAST_LOC_FIELDS,
    NYC,
    PRESENCE_FIELDS,
    SESSION_FIELDS,
    TRACKING_FIELDS,
    cell9,
    decoded,
    iso,
    nearby,
    now_plus,
    send_assign,
    send_ping,
    send_status,
    send_trip,
    session,
    wait_nearby,
    wait_session,
)
from tests.integration.harness import wait_for

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)

# Liveness is tested on its own; elsewhere a slow shared machine must not time drivers out mid-test.
PATIENT = {"GEODISPATCH_HEARTBEAT_INTERVAL_S": "30"}


def _presence(deployment, count: int, timeout: float = 30.0) -> list[dict]:
    return decoded(deployment.read(deployment.names.presence, count, timeout=timeout))


def test_driver_online_pings_and_appears_nearby_with_the_seed_000_shapes(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    send_status(deployment, "drv_1")
    send_ping(deployment, "drv_1")

    body = wait_session(worker, "drv_1", lambda s: s["online"] and s["last_loc"], message="online and located")
    assert set(body) == SESSION_FIELDS
    assert set(body["last_loc"]) == LAST_LOC_FIELDS
    assert body["driver_id"] == "drv_1"
    assert body["trip_id"] is None
    assert body["eligibility"] == {"ok": True, "status": "ACTIVE"}
    assert body["last_loc"]["lat"] == NYC[0] and body["last_loc"]["lng"] == NYC[1]
    assert body["last_loc"]["h3_res9"] == cell9()
    assert body["last_loc"]["speed_mps"] == 8.3 and body["last_loc"]["heading_deg"] == 90.0
    assert body["last_loc"]["ts"].endswith("Z")

    found = wait_nearby(worker, cell9(), lambda d: "drv_1" in d, message="drv_1 in its own cell")
    assert set(found) == {"drivers", "queried_cells"}
    assert found["drivers"] == ["drv_1"]
    assert len(found["queried_cells"]) == 7 and cell9() in found["queried_cells"]

    neighbour = next(c for c in h3.grid_ring(cell9(), 1))
    assert nearby(worker, neighbour, k=0) == {"drivers": [], "queried_cells": [neighbour]}
    assert nearby(worker, neighbour, k=1)["drivers"] == ["drv_1"]
    two_away = next(c for c in h3.grid_ring(cell9(), 2))
    assert nearby(worker, two_away, k=1)["drivers"] == []
    assert nearby(worker, two_away, k=2)["drivers"] == ["drv_1"]

    # A suspended driver is online but not offered.
    send_status(deployment, "drv_1", online=True, eligibility="SUSPENDED")
    body = wait_session(worker, "drv_1", lambda s: not s["eligibility"]["ok"], message="suspended")
    assert body["eligibility"] == {"ok": False, "status": "SUSPENDED"}
    assert nearby(worker, cell9())["drivers"] == []


def test_nearest_first_and_limit(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    centre = h3.cell_to_latlng(cell9())
    drivers = {"drv_far": (centre[0] + 0.004, centre[1]), "drv_near": (centre[0] + 0.0005, centre[1]),
               "drv_mid": (centre[0], centre[1] + 0.002)}
    for driver, (lat, lng) in drivers.items():
        send_status(deployment, driver)
        send_ping(deployment, driver, lat, lng)
    body = wait_nearby(worker, cell9(), lambda d: len(d) == 3, k=2, message="three drivers")
    assert body["drivers"] == ["drv_near", "drv_mid", "drv_far"]
    assert nearby(worker, cell9(), k=2, limit=2)["drivers"] == ["drv_near", "drv_mid"]


def test_a_ping_alone_creates_an_offline_session(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    send_ping(deployment, "drv_new")
    body = wait_session(worker, "drv_new", lambda s: s["last_loc"], message="created by a ping")
    assert body["online"] is False
    assert nearby(worker, cell9())["drivers"] == []


def test_explicit_offline_publishes_presence_and_pings_do_not_bring_the_driver_back(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    send_status(deployment, "drv_off")
    send_ping(deployment, "drv_off")
    wait_nearby(worker, cell9(), lambda d: "drv_off" in d, message="drv_off available")

    send_status(deployment, "drv_off", online=False)
    wait_session(worker, "drv_off", lambda s: not s["online"], message="offline")
    assert nearby(worker, cell9())["drivers"] == []
    send_ping(deployment, "drv_off", NYC[0] + 1e-4, NYC[1], ts=now_plus(0.5))
    wait_session(worker, "drv_off", lambda s: s["last_loc"]["lat"] != NYC[0], message="pinged while offline")
    records = _presence(deployment, 2)
    assert [(r["online"], r["reason"]) for r in records] == [(True, "status"), (False, "status")]
    for record in records:
        assert set(record) == PRESENCE_FIELDS
        assert record["driver_id"] == "drv_off"
    assert deployment.read(deployment.names.presence, 1)[0].key == b"drv_off"
    status, body = session(worker, "drv_off")
    assert status == 200 and body["online"] is False

    send_status(deployment, "drv_off", online=True)
    wait_nearby(worker, cell9(), lambda d: "drv_off" in d, message="back after a status online")


def test_missed_heartbeats_take_the_driver_offline_and_the_next_ping_brings_it_back(deployment):
    worker = deployment.start_worker()  # heartbeat 1 s, 2 missed (the harness's settings)
    worker.wait_ready()
    send_status(deployment, "drv_hb")
    send_ping(deployment, "drv_hb")
    wait_session(worker, "drv_hb", lambda s: s["online"] and s["last_loc"], message="online")

    wait_session(worker, "drv_hb", lambda s: not s["online"], timeout=20, message="timed out")
    assert nearby(worker, cell9())["drivers"] == []
    records = _presence(deployment, 2)
    timeout = [r for r in records if r["reason"] == "heartbeat_timeout"]
    assert len(timeout) == 1, records
    assert timeout[0]["online"] is False and timeout[0]["driver_id"] == "drv_hb"
    assert set(timeout[0]) == PRESENCE_FIELDS

    send_ping(deployment, "drv_hb")
    wait_session(worker, "drv_hb", lambda s: s["online"], timeout=20, message="back with a ping")
    wait_nearby(worker, cell9(), lambda d: "drv_hb" in d, timeout=10, message="available again")
    records = _presence(deployment, 3)
    assert records[-1]["online"] is True and records[-1]["driver_id"] == "drv_hb"


def test_a_trip_produces_throttled_tracking_and_delivered_frees_the_driver(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    send_status(deployment, "drv_trip")
    send_ping(deployment, "drv_trip", ts=now_plus(-5))
    wait_nearby(worker, cell9(), lambda d: "drv_trip" in d, message="available")

    send_trip(deployment, "drv_trip", "order_1", "picked_up")
    wait_session(worker, "drv_trip", lambda s: s["trip_id"] == "order_1", message="on the trip")
    assert nearby(worker, cell9())["drivers"] == []

    # Ten pings 300 ms apart in event time, 1 update/s allowed: updates at 0, 1.2 and 2.4 s.
    start = now_plus(-4)
    for i in range(10):
        send_ping(deployment, "drv_trip", NYC[0] + i * 1e-4, NYC[1], ts=start + timedelta(milliseconds=300 * i))
    wait_session(worker, "drv_trip", lambda s: abs(s["last_loc"]["lat"] - (NYC[0] + 9e-4)) < 1e-9,
                 message="every ping applied")
    updates = deployment.read(deployment.names.tracking, 3)
    assert len(updates) == 3, decoded(updates)
    assert all(r.key == b"order_1" for r in updates)
    bodies = decoded(updates)
    for body in bodies:
        assert set(body) == TRACKING_FIELDS
        assert body["type"] == "driver_location_update"
        assert body["booking_id"] == "order_1" and body["driver_id"] == "drv_trip"
        assert body["bearing"] == 90.0 and abs(body["speed_kmh"] - 8.3 * 3.6) < 0.01
    assert [round(b["lat"] - NYC[0], 6) for b in bodies] == [0.0, 0.0004, 0.0008]

    send_trip(deployment, "drv_trip", "order_1", "delivered")
    wait_session(worker, "drv_trip", lambda s: s["trip_id"] is None, message="freed")
    wait_nearby(worker, cell9(), lambda d: "drv_trip" in d, message="available after delivered")
    # No tracking once the trip is over.
    send_ping(deployment, "drv_trip", NYC[0], NYC[1], ts=now_plus(0))
    wait_session(worker, "drv_trip", lambda s: s["last_loc"]["lat"] == NYC[0], message="pinged")
    assert len(deployment.read(deployment.names.tracking, 4, timeout=3)) == 3


def test_an_assign_command_records_the_trip_and_cancelled_frees_it(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    send_status(deployment, "drv_cmd")
    send_ping(deployment, "drv_cmd", ts=now_plus(-1))
    wait_nearby(worker, cell9(), lambda d: "drv_cmd" in d, message="available")

    send_assign(deployment, "drv_cmd", "order_c")
    wait_session(worker, "drv_cmd", lambda s: s["trip_id"] == "order_c", message="assigned")
    send_ping(deployment, "drv_cmd", ts=now_plus(0))
    updates = deployment.read(deployment.names.tracking, 1)
    assert [r.key for r in updates] == [b"order_c"]

    send_trip(deployment, "drv_cmd", "order_c", "cancelled")
    wait_session(worker, "drv_cmd", lambda s: s["trip_id"] is None, message="freed by cancelled")
    wait_nearby(worker, cell9(), lambda d: "drv_cmd" in d, message="available again")
    # A late assign of the closed trip is ignored.
    send_assign(deployment, "drv_cmd", "order_c")
    send_ping(deployment, "drv_cmd", NYC[0] + 1e-4, NYC[1], ts=now_plus(0.5))
    body = wait_session(worker, "drv_cmd", lambda s: s["last_loc"]["lat"] != NYC[0], message="pinged")
    assert body["trip_id"] is None


def test_a_ping_on_the_wrong_partition_is_rerouted_and_applied_once(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    driver = "drv_routed"
    wrong = 1 - key_partition(driver.encode(), deployment.partitions)
    send_status(deployment, driver)
    send_ping(deployment, driver, partition=wrong)
    wait_nearby(worker, cell9(), lambda d: driver in d, message="rerouted ping applied")

    stats = wait_for(lambda: (lambda s: s if s[1]["pings"].get("accepted") else None)(worker.get("/stats")),
                     message="stats")[1]
    assert stats["rerouted"] == {"sessions": 1.0}
    assert stats["pings"] == {"accepted": 1.0}
    records = deployment.read(deployment.names.locations("4_-7"), 2)
    assert sorted(r.partition for r in records) == sorted([wrong, 1 - wrong])


def test_a_driver_crossing_region_topics_keeps_one_session(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    send_status(deployment, "drv_x")
    send_ping(deployment, "drv_x", ts=now_plus(-2))
    wait_nearby(worker, cell9(), lambda d: "drv_x" in d, message="in New York")

    lagos = (6.5244, 3.3792)
    send_ping(deployment, "drv_x", *lagos, ts=now_plus(-1), region="0_0")
    body = wait_session(worker, "drv_x", lambda s: s["last_loc"]["lat"] == lagos[0], message="moved")
    assert body["online"] is True and body["last_loc"]["h3_res9"] == cell9(*lagos)
    wait_nearby(worker, cell9(*lagos), lambda d: d == ["drv_x"], message="in Lagos")
    assert nearby(worker, cell9())["drivers"] == []
    # An older ping arriving late on the first region's topic changes nothing.
    send_ping(deployment, "drv_x", ts=now_plus(-1.5))
    stats = wait_for(lambda: (lambda s: s if s[1]["pings"].get("stale") else None)(worker.get("/stats")),
                     message="the late ping counted stale")[1]
    assert stats["pings"]["stale"] == 1.0
    assert session(worker, "drv_x")[1]["last_loc"]["lat"] == lagos[0]


def test_invalid_pings_are_dead_lettered_with_the_reason_and_counted(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    topic = deployment.names.locations("4_-7")
    bad = {
        "lat": {"driver_id": "drv_bad", "lat": 91.0, "lng": 0.0, "ts": iso()},
        "lng": {"driver_id": "drv_bad", "lat": 0.0, "lng": "east", "ts": iso()},
        "ts": {"driver_id": "drv_bad", "lat": 0.0, "lng": 0.0, "ts": "yesterday"},
        "driver_id": {"lat": 0.0, "lng": 0.0, "ts": iso()},
        "future": {"driver_id": "drv_bad", "lat": 0.0, "lng": 0.0, "ts": iso(now_plus(3600))},
        "value": b'{"driver_id": "drv_bad", "lat": NaN, "lng": 0.0}',
    }
    for value in bad.values():
        deployment.produce(topic, [(b"drv_bad", value if isinstance(value, bytes) else json.dumps(value).encode())])
    letters = deployment.read(deployment.names.dlq, len(bad))
    assert len(letters) == len(bad)
    messages = [dl.header_dict(letter.headers)[dl.ERROR_MESSAGE] for letter in letters]
    for field, message in zip(["lat", "lng", "ts", "driver_id", "ts", "value"], messages, strict=True):
        assert message.startswith(f"{field}:"), messages
    assert "in the future" in messages[4]
    assert session(worker, "drv_bad")[0] == 404
    stats = worker.get("/stats")[1]
    assert sum(v for k, v in stats["pings"].items() if k.startswith("invalid_")) == len(bad)


def test_a_driver_online_who_never_pings_is_timed_out(deployment):
    worker = deployment.start_worker()  # heartbeat 1 s, 2 missed
    worker.wait_ready()
    send_status(deployment, "drv_silent")
    wait_session(worker, "drv_silent", lambda s: s["online"], message="online")
    body = wait_session(worker, "drv_silent", lambda s: not s["online"], timeout=20, message="timed out")
    assert body["last_loc"] is None
    records = _presence(deployment, 2)
    assert [(r["online"], r["reason"]) for r in records] == [(True, "status"), (False, "heartbeat_timeout")]


def test_any_worker_answers_for_any_driver(deployment):
    first = deployment.start_worker("w1", **PATIENT)
    second = deployment.start_worker("w2", **PATIENT)
    first.wait_ready(timeout=90)
    second.wait_ready(timeout=90)
    # One driver on each partition, so each worker owns one of them once the group has settled.
    drivers = {}
    for i in range(100):
        drivers.setdefault(key_partition(f"drv_{i}".encode(), deployment.partitions), f"drv_{i}")
        if len(drivers) == deployment.partitions:
            break
    for driver in drivers.values():
        send_status(deployment, driver)
        send_ping(deployment, driver)
    for worker in (first, second):
        wait_nearby(worker, cell9(), lambda d: sorted(d) == sorted(drivers.values()), timeout=60,
                    message="both drivers from this worker")
        for driver in drivers.values():
            assert session(worker, driver)[1]["online"] is True


def test_avro_status_and_pings_are_applied_like_json(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    codec, now = default_codec(), now_plus(0)
    status = DriverStatus(driver_id="drv_avro", online=True, eligibility="ACTIVE", ts=now)
    ping = LocationPing(driver_id="drv_avro", lat=NYC[0], lng=NYC[1], speed_mps=3.0, heading_deg=180.0, ts=now)
    deployment.produce(deployment.names.status, [(b"drv_avro", codec.encode(status, "avro"))])
    deployment.produce(deployment.names.locations("4_-7"), [(b"drv_avro", codec.encode(ping, "avro"))])
    wait_nearby(worker, cell9(), lambda d: d == ["drv_avro"], message="an Avro driver")
    assert session(worker, "drv_avro")[1]["last_loc"]["heading_deg"] == 180.0
