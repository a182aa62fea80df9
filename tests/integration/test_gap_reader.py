"""The gap guard's reader: the records faust skipped, read back from the real broker in order."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP

from streams.faust_fixes import read_skipped
from streams.settings import Settings
from tests.integration.harness import BOOTSTRAP


async def _topic_with(values: list[bytes]) -> str:
    topic = f"gap.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    return topic


def test_the_skipped_records_are_read_back_in_order():
    async def scenario():
        topic = await _topic_with([f"r{i}".encode() for i in range(8)])
        consumer = SimpleNamespace(app=SimpleNamespace(runtime=SimpleNamespace(
            settings=Settings(kafka_bootstrap_servers=BOOTSTRAP))))
        middle = await read_skipped(consumer, TP(topic, 0), 2, 6)
        last = await read_skipped(consumer, TP(topic, 0), 7, 8)
        return middle, last

    middle, last = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [(r.offset, r.value) for r in middle] == [(2, b"r2"), (3, b"r3"), (4, b"r4"), (5, b"r5")]
    assert [(r.offset, r.value) for r in last] == [(7, b"r7")]
