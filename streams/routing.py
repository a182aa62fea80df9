"""Keeps each key's records where its state lives: a record on another partition than its key's
is written again to the right one and skipped here, so it is never processed in two places."""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING, Any

from infra.topics import key_partition
from streams.dlq import timestamp_ms
from streams.topics import send_confirmed

if TYPE_CHECKING:
    from streams.runtime import Runtime

REROUTED_FROM = "geodispatch.rerouted_from"


def misrouted(key: bytes | None, partition: int, partitions: int) -> int | None:
    """The partition the record should be on, or None when it is already there (or has no key)."""
    if not key:
        return None
    expected = key_partition(key, partitions)
    return None if expected == partition else expected


@functools.lru_cache(maxsize=1024)
def partition_key(name: str, partition: int, partitions: int) -> str:
    """A key, made of `name`, that Kafka's default partitioner puts on `partition`: for a record
    addressed to a partition rather than to a driver, which the routing check must leave where it is."""
    for n in itertools.count():
        key = f"{name}-{partition}-{n}"
        if key_partition(key.encode(), partitions) == partition:
            return key
    raise AssertionError("unreachable")


async def reroute(runtime: Runtime, message: Any, key: bytes, partition: int, stream: str) -> None:
    """Writes `message` again to `partition` of its topic, naming where it came from."""
    headers = [*(message.headers or ()), (REROUTED_FROM, f"{message.partition}@{message.offset}".encode())]
    # The original's timestamp kept: latency and a dead letter of the copy count from when it was sent.
    await send_confirmed(runtime.topics.named(message.topic), key=key, value=message.value,
                         partition=partition, headers=headers, timestamp=timestamp_ms(message) / 1000)
    runtime.metrics.rerouted.labels(stream=stream).inc()
