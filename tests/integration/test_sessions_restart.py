"""The Redis index is derived state: emptied, it comes back from the sessions table's changelog
when a worker starts, and on `geodispatch index rebuild` while workers run."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rocksdict import AccessType, Options, Rdict

from streams.routing import key_partition
from tests.integration.drivers import (
    NYC,
    cell9,
    delete_redis_keys,
    nearby,
    send_assign,
    send_ping,
    send_status,
    send_trip,
    session,
    wait_nearby,
)
from tests.integration.harness import BOOTSTRAP, run, wait_for

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)

DRIVERS = [f"drv_r{i}" for i in range(6)]
PATIENT = {"GEODISPATCH_HEARTBEAT_INTERVAL_S": "60"}
# Where faust's RocksDB store keeps a partition's persisted offset (faust/stores/rocksdb.py).
PERSISTED_OFFSET_KEY = b"__faust\0offset__"


def sessions_changelog(deployment) -> str:
    return f"{deployment.prefix}geodispatch-driver_sessions-changelog"


def end_offsets(topic: str, partitions: int) -> dict[int, int]:
    async def read() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
        await consumer.start()
        try:
            wanted = [TopicPartition(topic, p) for p in range(partitions)]
            return {tp.partition: end for tp, end in (await consumer.end_offsets(wanted)).items()}
        finally:
            await consumer.stop()

    return run(read())


def _online_fleet(deployment, worker) -> None:
    for i, driver in enumerate(DRIVERS):
        send_status(deployment, driver)
        send_ping(deployment, driver, NYC[0] + i * 1e-4, NYC[1])
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, message="the whole fleet")


def test_restart_with_an_emptied_redis_brings_every_driver_back(deployment):
    worker = deployment.start_worker("w1", **PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)

    worker.stop()
    assert delete_redis_keys(deployment) > 0

    worker = deployment.start_worker("w1", **PATIENT)  # same name: same data directory
    worker.wait_ready(timeout=90)
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, timeout=60, message="fleet rebuilt")
    status, body = session(worker, DRIVERS[0])
    assert status == 200 and body["online"] is True


# A store restored from the changelog by faust's recovery alone, or first caught up in bulk
# (streams/restore.py): both must give the same state.
RESTORE_PATHS = pytest.mark.parametrize("restore", ["faust", "bulk"])


def _restoring(restore: str) -> dict[str, str]:
    return {**PATIENT, "GEODISPATCH_BULK_RESTORE_MIN_RECORDS": "1" if restore == "bulk" else "0"}


def _assert_restored_by(worker, restore: str) -> None:
    assert ("changelog_bulk_restore_done" in worker.log()) is (restore == "bulk")


@RESTORE_PATHS
def test_restart_with_an_empty_data_dir_restores_from_the_changelog(deployment, restore):
    worker = deployment.start_worker("w1", **PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)

    worker.stop()
    assert delete_redis_keys(deployment) > 0

    worker = deployment.start_worker("w2", **_restoring(restore))  # a new data directory: only the changelog
    worker.wait_ready(timeout=90)
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, timeout=60, message="fleet restored")
    status, body = session(worker, DRIVERS[-1])
    assert status == 200 and body["online"] is True and body["last_loc"]
    _assert_restored_by(worker, restore)


def test_a_stopped_worker_has_persisted_the_offset_of_every_changelog_write_it_made(deployment):
    """A warm restart reads only the changelog records its store lacks: those after each partition's
    persisted offset, which the acknowledgement of each of the worker's writes advances."""
    worker = deployment.start_worker("w1", **PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)
    worker.stop()

    changelog = sessions_changelog(deployment)
    ends = end_offsets(changelog, deployment.partitions)
    assert sum(ends.values()) == len(DRIVERS)  # a status each: pings have no changelog record
    for partition, end in ends.items():
        (path,) = (deployment.data_dir("w1")).glob(f"**/driver_sessions-{partition}.db")
        store = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            persisted = store.get(PERSISTED_OFFSET_KEY)
        finally:
            store.close()
        assert (int(persisted) if persisted is not None else -1) == end - 1, partition


@RESTORE_PATHS
def test_a_late_changelog_write_of_a_former_owner_loses_to_the_owners_on_restore(deployment, restore):
    """A worker paused past its session timeout wakes up and writes the session it still holds (the
    trip open, a higher version) to the changelog after the new owner's. A restore must keep the
    owner's state: otherwise the finished trip, and its reservation in Redis, come back."""
    driver, order = "drv_fenced", "ord_done"
    changelog = sessions_changelog(deployment)
    worker = deployment.start_worker("w1", **PATIENT)
    worker.wait_ready()
    send_status(deployment, driver)
    send_ping(deployment, driver)
    send_assign(deployment, driver, order)
    send_trip(deployment, driver, order, "delivered")
    wait_nearby(worker, cell9(), lambda d: d == [driver], k=2, message="the driver free after the delivery")

    def owners_last_entry():
        entries = [r for r in deployment.read_all(changelog) if r.key == driver.encode()]
        last = entries[-1] if entries else None
        return last if last is not None and order in orjson.loads(last.value)["closed_trips"] else None

    last = wait_for(owners_last_entry, timeout=30, message="the delivery in the changelog")
    worker.stop()
    owner = orjson.loads(last.value)
    assert owner["fence"] > 0 and owner["trip_id"] is None
    zombie = {**owner, "trip_id": order, "closed_trips": [], "version": owner["version"] + 5,
              "fence": owner["fence"] - 1}
    deployment.produce(changelog, [(driver.encode(), orjson.dumps(zombie))], partition=last.partition)
    assert delete_redis_keys(deployment) > 0

    worker = deployment.start_worker("w2", **_restoring(restore))  # a new data directory: only the changelog
    worker.wait_ready(timeout=90)
    wait_nearby(worker, cell9(), lambda d: d == [driver], k=2, timeout=60, message="the driver restored free")
    _assert_restored_by(worker, restore)
    assert session(worker, driver)[1]["trip_id"] is None
    assert deployment.redis().get(deployment.redis_keys.reservation(driver)) is None
    _, metrics = worker.get("/metrics")
    assert 'geodispatch_fenced_writes_total{store="changelog"} 1.0' in metrics


def test_after_redis_is_emptied_no_driver_looks_free_before_the_commands_sent_before_are_applied(deployment):
    """A reservation made just before Redis was emptied is lost with it; it comes back only when the
    driver's session hears of the trip through the driver-commands topic. Until the worker has applied
    every command sent before the loss, the index must not show that driver as free, or a second order
    could take it. A backlog of other commands on the driver's partition makes the trip arrive late."""
    driver, order = "drv_wiped", "ord_before_wipe"
    worker = deployment.start_worker("w1", **PATIENT)
    worker.wait_ready()
    send_status(deployment, driver)
    send_ping(deployment, driver)
    wait_nearby(worker, cell9(), lambda d: d == [driver], k=2, message="the driver free")
    worker.stop()

    partition = key_partition(driver.encode(), deployment.partitions)
    others = (f"drv_other{i}" for i in range(10**6))
    backlog = [d for d in others if key_partition(d.encode(), deployment.partitions) == partition][:BACKLOG]
    check = {"kind": "heartbeat_check", "ts": datetime.now(UTC).isoformat()}
    records = [(d.encode(), orjson.dumps({**check, "driver_id": d})) for d in backlog]
    records.append((driver.encode(), orjson.dumps({**check, "driver_id": driver, "kind": "assign", "order_id": order})))
    produce_many(deployment, deployment.names.driver_commands, records)
    assert delete_redis_keys(deployment) > 0

    worker = deployment.start_worker("w1", **PATIENT)  # same data directory: the session has no trip yet
    seen_free = []

    def trip_recorded():
        try:  # from the moment the process starts, before its HTTP server listens
            if driver in nearby(worker, cell9(), k=2)["drivers"]:
                seen_free.append(time.monotonic())
            status, body = session(worker, driver)
        except OSError:
            return False
        return status == 200 and body["trip_id"] == order

    wait_for(trip_recorded, timeout=120, interval=0.05, message="the trip to reach the session")
    assert seen_free == [], "the driver was offered while its trip was still on its way"
    assert deployment.redis().get(deployment.redis_keys.reservation(driver)) == order


BACKLOG = 8000


def produce_many(deployment, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=deployment.bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in records])
        finally:
            await producer.stop()

    run(send())


def test_index_rebuild_command_restores_deleted_keys(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)

    # Everything but the epoch and the partitions' readiness: the worker cannot notice on its own, only
    # the command repairs it.
    keys = deployment.redis_keys
    assert delete_redis_keys(deployment, keep=(keys.epoch, *map(keys.ready, range(deployment.partitions)))) > 0
    time.sleep(2.5)
    assert nearby(worker, cell9(), k=2)["drivers"] == []
    result = deployment.cli("index", "rebuild")
    assert "new epoch" in result.stdout
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, timeout=30, message="fleet rebuilt")


def test_index_rebuild_command_restores_lost_hints(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)

    # The drivers' hashes survive (same versions as the table's), only the shards' hints are gone.
    assert delete_redis_keys(deployment, match="geo:*") > 0
    assert nearby(worker, cell9(), k=2)["drivers"] == []
    deployment.cli("index", "rebuild")
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, timeout=30, message="hints rebuilt")
