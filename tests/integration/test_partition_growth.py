"""Growing a deployment's partition count (`geodispatch topics grow`, infra/repartition.py) with its
workers stopped: every driver keeps his session (online, position, trip) on his new partition, the
driver an order reserved stays reserved, a redelivered request gets its decision again, and a second
run finds nothing left to move. On the real broker and Redis, and on the clusters of `make
test-cluster`."""

from __future__ import annotations

import dataclasses

import pytest

from infra.topics import SESSIONS_TABLE, key_partition
from tests.integration.drivers import send_ping
from tests.integration.harness import Deployment, wait_for
from tests.integration.test_assignment import RESTAURANT, City

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)

BEFORE, AFTER = 2, 4
FLEET = [f"drv_g{i}" for i in range(16)]


def _moving(drivers: list[str]) -> list[str]:
    return [d for d in drivers if key_partition(d.encode(), BEFORE) != key_partition(d.encode(), AFTER)]


@pytest.fixture
def small(tmp_path):
    dep = Deployment(workdir=tmp_path, partitions=BEFORE)
    dep.extra_env.update(GEODISPATCH_MISSED_HEARTBEATS="1000", GEODISPATCH_LOCATION_MAX_AGE_S="600")
    dep.apply_topics()
    yield dep
    dep.cleanup()


def test_growing_the_partitions_keeps_sessions_reservations_and_decisions(small):
    moving = _moving(FLEET)
    assert len(moving) >= 3
    # The nearest driver to the restaurant moves, so the order's reservation has to move with him.
    fleet = moving + [d for d in FLEET if d not in moving]
    worker = small.start_worker("w1")
    worker.wait_ready()
    city = City(small, worker)
    for i, driver in enumerate(fleet):
        city.driver(driver, 0.2 + 0.1 * i)
    on_trip = moving[1]
    city.trip(on_trip, "ord_trip", "picked_up")
    wait_for(lambda: city.session(on_trip).get("trip_id") == "ord_trip", message="the trip")
    city.ask("ord_before")
    decided = city.answer("ord_before", 1)
    assert decided["driverId"] == moving[0]
    wait_for(lambda: city.session(moving[0]).get("trip_id") == "ord_before", message="the assignment's trip")
    before = {driver: city.session(driver) for driver in fleet}
    worker.stop()

    grown = dataclasses.replace(small, partitions=AFTER, workers=[])
    try:
        out = grown.cli("topics", "grow")
        assert f"grown from {BEFORE} to {AFTER} partitions" in out.stdout, out.stdout + out.stderr
        assert " 0 table entries" not in out.stdout and " 0 Redis keys" not in out.stdout, out.stdout
        # Each moved driver's entry in the sessions changelog: live on his new partition, deleted on his old
        # one, whichever worker comes to own either.
        latest = {(r.partition, r.key): r.value
                  for r in grown.read_all(grown.names.changelog(grown.app_id, SESSIONS_TABLE))}
        for driver in moving:
            key = driver.encode()
            assert latest[(key_partition(key, AFTER), key)] is not None, driver
            assert latest[(key_partition(key, BEFORE), key)] is None, driver
        client, keys = grown.redis(), grown.redis_keys
        try:
            assert client.get(keys.reservation(moving[0])) == "ord_before"
            assert client.exists(small.redis_keys.reservation(moving[0])) == 0
        finally:
            client.close()

        worker = grown.start_worker("w1")  # the same data directory, its stores of two partitions
        worker.wait_ready(timeout=90)
        city = City(grown, worker)
        # Each moved driver's next ping, on his new partition, goes on from his session. (One worker holds
        # the old partitions too: the changelog check above is what shows the entries moved.)
        for i, driver in enumerate(moving):
            lat = RESTAURANT[0] + 0.0001 * (i + 1)
            send_ping(grown, driver, lat, RESTAURANT[1])
            wait_for(lambda d=driver, la=lat: (city.session(d).get("last_loc") or {}).get("lat") == la,
                     timeout=60, message=f"{driver}'s ping after the growth")
        after = {driver: city.session(driver) for driver in fleet}
        for driver in fleet:
            assert after[driver]["online"] is True, (driver, after[driver])
            assert after[driver]["trip_id"] == before[driver]["trip_id"], driver
        assert after[on_trip]["trip_id"] == "ord_trip"

        city.ask("ord_before")
        city.ask("ord_after")
        answers = city.answers(3)
        assert answers["ord_before"] == [decided, decided]
        assert answers["ord_after"][0]["driverId"] not in (moving[0], on_trip)

        refused = grown.cli("topics", "grow", check=False)
        assert refused.returncode == 2 and "stop every worker" in refused.stderr, refused.stderr
        worker.stop()
        again = grown.cli("topics", "grow")
        assert "0 topics widened, 0 table entries and 0 Redis keys moved" in again.stdout, again.stdout
    finally:
        grown.stop_all()  # small's cleanup stops only the workers it started
