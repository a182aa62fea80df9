"""Kafka consumers built from the settings (security included), and reading a topic from start to its end."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
    cluster = await consumer._client.fetch_all_metadata()
    return cluster.partitions_for_topic(topic) or set()


async def read_to_end(settings: Settings, topic: str, poll_ms: int = 500) -> AsyncIterator[ConsumerRecord]:
    """Every record of `topic` from its first offset up to its end as of the call, then stops."""
    consumer = new_consumer(settings)
    await start(consumer, settings)
    try:
        partitions = await partitions_of(consumer, topic)
        if not partitions:
            raise Unreachable(
                f"topic {topic} does not exist (wrong GEODISPATCH_TOPIC_PREFIX? `geodispatch topics apply`)")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        remaining = {tp for tp in assigned if ends[tp] > await consumer.position(tp)}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=poll_ms)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
