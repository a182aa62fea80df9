"""Pings read in batches by their own consumer (streams/agents/pings.py), on the real broker and Redis:
where each partition starts, what is committed, and that a worker stops cleanly with it."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.routing import key_partition
from tests.integration.drivers import NYC, now_plus, ping_value, send_ping, wait_session
from tests.integration.harness import BOOTSTRAP, run, wait_for
from tests.integration.test_sessions_restart import sessions_changelog

PATIENT = {"GEODISPATCH_HEARTBEAT_INTERVAL_S": "30"}
REGION = "4_-7"


def pings_group(deployment) -> str:
    return f"{deployment.prefix}geodispatch.pings"


def app_group(deployment) -> str:
    return f"{deployment.prefix}geodispatch"


def committed(group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
    async def read() -> dict[TopicPartition, int | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            return {tp: await consumer.committed(tp) for tp in tps}
        finally:
            await consumer.stop()

    return run(read())


def commit(group: str, offsets: dict[TopicPartition, int]) -> None:
    async def write() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(list(offsets))
            await consumer.commit(offsets)
        finally:
            await consumer.stop()

    run(write())


def pings_counted(worker) -> int:
    return sum(worker.get("/stats")[1]["pings"].values())


def test_pings_are_committed_in_their_own_group_and_a_restart_reads_on_from_there(deployment):
    deployment.apply_topics()
    topic = deployment.names.locations(REGION)
    tps = [TopicPartition(topic, p) for p in range(deployment.partitions)]
    drivers = [f"pb_{n}" for n in range(6)]
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    for driver in drivers:
        send_ping(deployment, driver)
    for driver in drivers:
        wait_session(worker, driver, lambda s: s["last_loc"] is not None, message="located")
    worker.stop()
    assert worker.process.returncode == 0, worker.log()[-3000:]  # a clean stop, not killed after a wait

    ends = {tp: 0 for tp in tps}
    for driver in drivers:
        ends[TopicPartition(topic, key_partition(driver.encode(), deployment.partitions))] += 1
    assert committed(pings_group(deployment), tps) == {tp: end or None for tp, end in ends.items()}

    again = deployment.start_worker("w2", **PATIENT)
    again.wait_ready()
    send_ping(deployment, drivers[0], lat=NYC[0] + 0.001)
    wait_session(again, drivers[0], lambda s: s["last_loc"]["lat"] == NYC[0] + 0.001, message="moved")
    assert pings_counted(again) == 1  # the new ping only: none of those committed was read again


def test_a_partition_without_a_commit_of_its_own_starts_where_the_app_group_had_it(deployment):
    """A worker upgraded from reading pings through faust goes on from faust's commit."""
    deployment.apply_topics()
    topic = deployment.names.locations(REGION)
    driver = "pb_upgraded"
    tp = TopicPartition(topic, key_partition(driver.encode(), deployment.partitions))
    send_ping(deployment, driver, lat=NYC[0] + 0.002)  # offset 0: applied before the upgrade
    send_ping(deployment, driver, lat=NYC[0] + 0.003)  # offset 1: not yet
    commit(app_group(deployment), {tp: 1})

    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    wait_session(worker, driver, lambda s: s["last_loc"] is not None, message="located")
    wait_for(lambda: committed(pings_group(deployment), [tp])[tp] == 2, message="its own commit after the ping")
    assert pings_counted(worker) == 1
    assert wait_session(worker, driver, lambda s: True)["last_loc"]["lat"] == NYC[0] + 0.003


def test_a_commit_past_the_end_of_the_log_does_not_keep_the_worker_from_becoming_ready(deployment):
    """The ping topic emptied or created again under an old commit: positions are read back up to the
    log's end, not waited for up to the commit."""
    deployment.apply_topics()
    topic = deployment.names.locations(REGION)
    driver = "pb_recreated"
    tp = TopicPartition(topic, key_partition(driver.encode(), deployment.partitions))
    send_ping(deployment, driver, lat=NYC[0] + 0.004)
    commit(pings_group(deployment), {tp: 1000})

    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready(timeout=60)
    body = wait_session(worker, driver, lambda s: s["last_loc"] is not None, message="located from the log")
    assert body["last_loc"]["lat"] == NYC[0] + 0.004
    assert "positions_recovered" in worker.log()


def test_a_poisoned_ping_inside_a_batch_is_dead_lettered_alone_and_the_others_applied_once(deployment):
    """Pings produced while no worker runs arrive as one batch: the poisoned one goes to the DLQ with its
    reason, every other one is applied, and a driver with two pings in it gets one changelog record."""
    deployment.apply_topics()
    topic = deployment.names.locations(REGION)
    drivers = [f"pp_{n}" for n in range(8)]
    partition = key_partition(drivers[0].encode(), deployment.partitions)
    drivers = [d for d in drivers if key_partition(d.encode(), deployment.partitions) == partition]
    started = now_plus(-5)
    records = [(d.encode(), ping_value(d, NYC[0] + 0.001 * n, NYC[1], started)) for n, d in enumerate(drivers)]
    poison = (drivers[0].encode(), ping_value(drivers[0], 95.0, NYC[1], now_plus(-4)))  # latitude out of range
    last = (drivers[0].encode(), ping_value(drivers[0], NYC[0] + 0.01, NYC[1], now_plus(-3)))
    middle = len(records) // 2
    deployment.produce(topic, [*records[:middle], poison, *records[middle:], last], partition=partition)

    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    for n, driver in enumerate(drivers):
        lat = NYC[0] + (0.01 if n == 0 else 0.001 * n)
        wait_session(worker, driver, lambda s, lat=lat: (s["last_loc"] or {}).get("lat") == lat, message="located")
    (letter,) = deployment.read(deployment.names.dlq, 1)
    headers = dict(letter.headers)
    assert letter.value == poison[1]
    assert headers["dlq.error.class"] == b"InvalidMessage" and b"lat" in headers["dlq.error.message"]
    counted = worker.get("/stats")[1]["pings"]
    assert counted.get("accepted") == len(drivers) + 1 and counted.get("invalid_lat") == 1, counted
    # Position has no changelog record: the ping log is its changelog.
    assert deployment.read_all(sessions_changelog(deployment)) == []
