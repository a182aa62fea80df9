"""Kafka consumers built from the settings (security included), and reading a topic between two points:
its start or an offset or a moment (offsets_for_times), up to its end or a moment, with no group."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from infra.clients import new_consumer
from infra.settings import Settings
from producers.commandline import Unreachable


async def start(consumer: AIOKafkaConsumer, settings: Settings) -> None:
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await consumer.stop()
        raise Unreachable(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}") from exc


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The topic's partitions, empty when it does not exist. A fresh metadata fetch: the consumer's own
    partitions_for_topic only knows topics it already follows."""
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 (aiokafka has no public call for it)
    return cluster.partitions_for_topic(topic) or set()


@dataclass(frozen=True)
class Span:
    """Where to read: which partitions (all when empty), from an offset or a moment (epoch ms, the first
    record at or after it by record timestamp) or the start, up to a moment, an offset (exclusive) or the
    end as of the call, whichever comes first."""

    partitions: tuple[int, ...] = ()
    offset: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    end_offset: int | None = None


async def moment_offsets(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition], moment_ms: int,
                         ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Per partition, the first offset whose record timestamp is at or after `moment_ms` (the broker's time
    index answers: nothing before it is read), or the partition's end when no record is that recent."""
    tps = list(tps)
    found = await consumer.offsets_for_times(dict.fromkeys(tps, max(0, moment_ms)))
    return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in tps}


async def bounds(consumer: AIOKafkaConsumer, tps: list[TopicPartition], span: Span
                 ) -> dict[TopicPartition, tuple[int, int]]:
    """Each partition's [first, end) offsets to read for `span`."""
    beginnings = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    if span.until_ms is not None:
        ends = await moment_offsets(consumer, tps, span.until_ms, ends)
    if span.end_offset is not None:
        ends = {tp: min(end, span.end_offset) for tp, end in ends.items()}
    if span.since_ms is not None:
        firsts = await moment_offsets(consumer, tps, span.since_ms, ends)
    else:
        firsts = dict(beginnings)
    if span.offset is not None:
        firsts = {tp: max(firsts[tp], span.offset) for tp in tps}
    return {tp: (max(firsts[tp], beginnings[tp]), ends[tp]) for tp in tps}


async def assigned_partitions(consumer: AIOKafkaConsumer, topic: str, wanted: Iterable[int] = ()
                              ) -> list[TopicPartition]:
    """The topic's partitions (those `wanted`, when named), assigned to `consumer`; Unreachable when the topic
    or a wanted partition does not exist."""
    partitions = await partitions_of(consumer, topic)
    if not partitions:
        raise Unreachable(f"topic {topic} does not exist (wrong GEODISPATCH_TOPIC_PREFIX? `geodispatch topics apply`)")
    wanted = set(wanted)
    if wanted - partitions:
        raise Unreachable(f"topic {topic} has no partition {sorted(wanted - partitions)} "
                          f"(it has {len(partitions)})")
    assigned = [TopicPartition(topic, p) for p in sorted(wanted or partitions)]
    consumer.assign(assigned)
    return assigned


async def read_span(settings: Settings, topic: str, span: Span = Span(), poll_ms: int = 500,
                    missing_ok: bool = False) -> AsyncIterator[ConsumerRecord]:
    """The records of `topic` in `span`, partition by partition interleaved as fetched, streamed: nothing
    before the span's first offsets is fetched, and reading stops at its ends. With `missing_ok`, a topic
    that does not exist reads as empty."""
    consumer = new_consumer(settings)
    await start(consumer, settings)
    try:
        if missing_ok and not await partitions_of(consumer, topic):
            return
        assigned = await assigned_partitions(consumer, topic, span.partitions)
        limits = await bounds(consumer, assigned, span)
        remaining = set()
        for tp, (first, end) in limits.items():
            if first < end:
                consumer.seek(tp, first)
                remaining.add(tp)
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=poll_ms)
            for tp, records in batches.items():
                end = limits[tp][1]
                for record in records:
                    if record.offset < end:
                        yield record
            for tp in list(remaining):
                if await consumer.position(tp) >= limits[tp][1]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def read_to_end(settings: Settings, topic: str, poll_ms: int = 500, missing_ok: bool = False
                      ) -> AsyncIterator[ConsumerRecord]:
    """Every record of `topic` from its first offset up to its end as of the call, then stops."""
    async for record in read_span(settings, topic, Span(), poll_ms, missing_ok):
        yield record


async def read_one(settings: Settings, topic: str, partition: int, offset: int) -> ConsumerRecord | None:
    """The record at `topic`[`partition`]@`offset`, fetched alone; None when there is none (before the first
    offset kept, at or past the end, or compacted away)."""
    consumer = new_consumer(settings)
    await start(consumer, settings)
    try:
        (tp,) = await assigned_partitions(consumer, topic, (partition,))
        first, end = (await bounds(consumer, [tp], Span(offset=offset)))[tp]
        if not first <= offset < end:
            return None
        consumer.seek(tp, offset)
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=500, max_records=1)).get(tp, []):
                return record if record.offset == offset else None
        return None
    finally:
        await consumer.stop()
