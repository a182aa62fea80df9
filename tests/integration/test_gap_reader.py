"""The gap guard's reader: the records faust skipped, read back from the real broker in order."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

from faust.types import TP

from infra.settings import Settings
from streams.faust_fixes import read_skipped
from tests.integration.harness import BOOTSTRAP, topic_with


def test_the_skipped_records_are_read_back_in_order():
    async def scenario():
        topic = await topic_with(f"gap.{uuid.uuid4().hex[:10]}", 1, ((0, b"k", f"r{i}".encode()) for i in range(8)))
        consumer = SimpleNamespace(app=SimpleNamespace(runtime=SimpleNamespace(
            settings=Settings(kafka_bootstrap_servers=BOOTSTRAP))))
        middle = await read_skipped(consumer, TP(topic, 0), 2, 6)
        last = await read_skipped(consumer, TP(topic, 0), 7, 8)
        return middle, last

    middle, last = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [(r.offset, r.value) for r in middle] == [(2, b"r2"), (3, b"r3"), (4, b"r4"), (5, b"r5")]
    assert [(r.offset, r.value) for r in last] == [(7, b"r7")]
