"""Position has no changelog of its own: the ping log is read back when partitions are assigned
(streams/agents/pings.py, `recover_positions`), while status, eligibility and trips keep theirs. On the
real broker and Redis, with an empty data directory and an emptied Redis, so that nothing but the two
logs is left to restore from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.drivers import (
    NYC,
    cell9,
    delete_redis_keys,
    nearby,
    ping_value,
    send_assign,
    send_ping,
    send_status,
    session,
    wait_nearby,
    wait_session,
)
from tests.integration.test_sessions_restart import end_offsets, sessions_changelog

REGION = "4_-7"
LOCATION_AGE_S = 60
# The ping log is read back for the heartbeat timeout (90 s), longer than the location age: a driver
# stays online through the restart.
SETTINGS = {"GEODISPATCH_LOCATION_MAX_AGE_S": str(LOCATION_AGE_S), "GEODISPATCH_HEARTBEAT_INTERVAL_S": "30"}
FRESH = [f"pos_fresh{i}" for i in range(6)]
STALE = [f"pos_stale{i}" for i in range(3)]


def _at(driver: str, moved: bool) -> tuple[float, float]:
    """Each fresh driver's own place, a little east once it moved."""
    index = FRESH.index(driver)
    return NYC[0] + index * 1e-4, NYC[1] + (2e-4 if moved else 0.0)


def _restart_with_nothing_but_the_logs(deployment, worker):
    worker.stop()
    assert delete_redis_keys(deployment) > 0
    again = deployment.start_worker("w2", **SETTINGS)  # a new data directory
    again.wait_ready(timeout=90)
    return again


def test_an_empty_data_dir_offers_every_driver_who_pinged_within_the_location_age_at_its_last_position(deployment):
    worker = deployment.start_worker("w1", **SETTINGS)
    worker.wait_ready()
    # Stale drivers pinged before the location age, as their records' timestamps say too, then said
    # online: online with a position too old to offer.
    long_ago = datetime.now(UTC) - timedelta(seconds=LOCATION_AGE_S + 20)
    for driver in STALE:
        deployment.produce(deployment.names.locations(REGION), [(driver.encode(), ping_value(driver, *NYC, long_ago))],
                           timestamp_ms=int(long_ago.timestamp() * 1000))
    for driver in STALE + FRESH:
        send_status(deployment, driver)
    for driver in FRESH:
        send_ping(deployment, driver, *_at(driver, moved=False), ts=datetime.now(UTC) - timedelta(seconds=2))
    for driver in FRESH:
        send_ping(deployment, driver, *_at(driver, moved=True))
    for driver in FRESH:
        wait_session(worker, driver, lambda s, d=driver: (s["last_loc"]["lat"], s["last_loc"]["lng"]) == _at(d, True),
                     message=f"{driver} moved")
    for driver in STALE:
        wait_session(worker, driver, lambda s: s["online"] and s["last_loc"] is not None, message=f"{driver} online")
    assert sorted(nearby(worker, cell9(), k=3)["drivers"]) == FRESH

    # One changelog record per status, none per ping.
    assert sum(end_offsets(sessions_changelog(deployment), deployment.partitions).values()) == len(STALE + FRESH)

    worker = _restart_with_nothing_but_the_logs(deployment, worker)
    wait_nearby(worker, cell9(), lambda d: sorted(d) == FRESH, k=3, timeout=60, message="the fresh drivers offered")
    for driver in FRESH:
        status, body = session(worker, driver)
        assert status == 200 and body["online"] is True
        assert (body["last_loc"]["lat"], body["last_loc"]["lng"]) == _at(driver, moved=True), driver
    for driver in STALE:
        status, body = session(worker, driver)
        assert status == 200 and body["online"] is True, driver  # online, and still not offered
    assert sorted(nearby(worker, cell9(), k=3)["drivers"]) == FRESH
    _, metrics = worker.get("/metrics")
    # Each fresh driver's last ping applied, its first superseded; the stale ones too old to read back.
    assert f'geodispatch_positions_recovered_total{{outcome="applied"}} {float(len(FRESH))}' in metrics
    assert f'geodispatch_positions_recovered_total{{outcome="superseded"}} {float(len(FRESH))}' in metrics
    assert [line for line in metrics.splitlines() if line.startswith("geodispatch_pings_total{")] == []


def test_status_eligibility_and_trip_survive_a_restart_though_no_ping_has_a_changelog_record(deployment):
    busy, suspended, order = "pos_busy", "pos_suspended", "ord_kept"
    worker = deployment.start_worker("w1", **SETTINGS)
    worker.wait_ready()
    send_status(deployment, busy)
    send_status(deployment, suspended, eligibility="SUSPENDED")
    for driver in (busy, suspended):
        send_ping(deployment, driver)
    send_assign(deployment, busy, order)
    wait_session(worker, busy, lambda s: s["trip_id"] == order, message="the trip recorded")
    wait_session(worker, suspended, lambda s: s["eligibility"]["status"] == "SUSPENDED", message="suspended")
    # Two statuses and the trip.
    assert sum(end_offsets(sessions_changelog(deployment), deployment.partitions).values()) == 3

    worker = _restart_with_nothing_but_the_logs(deployment, worker)
    body = wait_session(worker, busy, lambda s: s["trip_id"] == order, timeout=60, message="the trip restored")
    assert body["online"] is True and body["last_loc"] is not None
    body = wait_session(worker, suspended, lambda s: s["last_loc"] is not None, message="suspended, located")
    assert body["eligibility"] == {"ok": False, "status": "SUSPENDED"} and body["online"] is True
    assert nearby(worker, cell9(), k=2)["drivers"] == []  # one on a trip, one suspended
