"""Kafka clients built from the settings, security included: the one way the project makes them."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from infra.settings import Settings


def new_consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer of no group, reading from the beginning unless told otherwise."""
    defaults: dict[str, Any] = {"group_id": None, "enable_auto_commit": False, "auto_offset_reset": "earliest"}
    defaults.update(options)
    return AIOKafkaConsumer(
        *topics, bootstrap_servers=settings.kafka_bootstrap_servers, **defaults, **settings.kafka_client_options()
    )


async def committed_offsets(settings: Settings, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offsets `group` has committed for these partitions (those it has none for left out)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **settings.kafka_client_options())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
