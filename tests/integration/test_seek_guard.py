"""The seek guard on the real broker, through faust's own `perform_seek` and commit bookkeeping: a
partition that has records but no commit yet is read again from the beginning of its log after the
seek to committed offsets (aiokafka alone leaves it where it is), and the commit guard holds its
first commit at where it started and processes what was skipped there."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree
from structlog.testing import capture_logs

from infra.settings import Settings
from streams.faust_fixes import GuardedConsumer
from tests.integration.harness import BOOTSTRAP, topic_with
from tests.unit.guarded import guarded

RECORDS = 4
GENERATION = 5


def _faust_consumer(client: AIOKafkaConsumer, acked_topics: set[str]) -> GuardedConsumer:
    """Our consumer with the parts of faust's that `perform_seek`, the seek guard and the commit guard
    use, around a real aiokafka client (faust runs it in a thread of its own; here it shares the test's
    loop)."""
    delivered: list[int] = []

    async def call_thread(fun, *args):
        return await fun(*args)

    async def callback(message) -> None:
        delivered.append(message.offset)

    return guarded(
        _thread=SimpleNamespace(call_thread=call_thread, _ensure_consumer=lambda: client),
        app=SimpleNamespace(consumer_generation_id=GENERATION,
                            topics=SimpleNamespace(acks_enabled_for=lambda topic: topic in acked_topics),
                            runtime=SimpleNamespace(settings=Settings(kafka_bootstrap_servers=BOOTSTRAP))),
        assignment=client.assignment,
        _read_offset=defaultdict(lambda: None), _committed_offset=defaultdict(lambda: None),
        _acked=defaultdict(list), _acked_index=defaultdict(set), _gap=defaultdict(IntervalTree),
        callback=callback, _to_message=lambda tp, record: record, delivered=delivered,
    )


async def _read_all(client: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
    while min(await _positions(client, tps)) < RECORDS:
        await client.getmany(*tps, timeout_ms=500)


async def _positions(client: AIOKafkaConsumer, tps: list[TopicPartition]) -> list[int]:
    return [await client.position(tp) for tp in tps]


def test_a_partition_without_a_commit_is_read_again_from_its_beginning_and_its_first_commit_held():
    async def scenario():
        name = f"seek.{uuid.uuid4().hex[:10]}"
        changelog = f"{name}-changelog"
        records = [(partition, b"k", f"r{i}".encode()) for i in range(RECORDS) for partition in (0, 1)]
        await topic_with(name, 2, records)
        await topic_with(changelog, 1, [(0, b"k", f"c{i}".encode()) for i in range(RECORDS)])
        uncommitted, committed, changes = TopicPartition(name, 0), TopicPartition(name, 1), TopicPartition(changelog, 0)
        tps = [uncommitted, committed, changes]
        client = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=f"g-{name}", enable_auto_commit=False,
                                  auto_offset_reset="earliest")
        await client.start()
        try:
            client.assign(tps)
            await client.commit({committed: 3})
            await _read_all(client, tps)  # what faust fetched, then dropped around a rebalance

            await client.seek_to_committed()
            aiokafka_alone = await _positions(client, tps)
            await _read_all(client, tps)

            consumer = _faust_consumer(client, acked_topics={name})
            for partition in (0, 1):
                consumer._read_offset[TP(name, partition)] = RECORDS - 1
            with capture_logs() as logs:
                await Consumer.perform_seek(consumer)  # faust's own, which calls the guarded seek
            guarded = await _positions(client, tps)

            # The stream then processes 2 and 3 but not 0 and 1 (dropped again): nothing may be committed.
            tp = TP(name, 0)
            consumer._acked[tp].extend([2, 3])
            consumer._acked_index[tp].update([2, 3])
            held = consumer._new_offset(tp)
            for _ in range(100):
                if consumer.delivered:
                    break
                await asyncio.sleep(0.05)
            return name, aiokafka_alone, guarded, consumer, held, logs
        finally:
            await client.stop()

    name, aiokafka_alone, guarded, consumer, held, logs = asyncio.run(asyncio.wait_for(scenario(), 60))
    # If aiokafka starts seeking partitions without a commit, the first figure changes and the guard can go.
    assert aiokafka_alone == [RECORDS, 3, RECORDS]
    assert guarded == [0, 3, RECORDS]  # the changelog partition left where faust's recovery put it
    assert consumer._read_offset[TP(name, 0)] == 0 and consumer._read_offset[TP(name, 1)] == 3
    assert [(e["event"], e["partition"], e["first"], e["read_offset"]) for e in logs] == [
        ("uncommitted_partition_read_again", 0, 0, RECORDS - 1)]
    assert held is None
    assert consumer.delivered == [0, 1]  # the records before the first acked one, read from the log
