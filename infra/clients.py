"""Kafka clients built from the settings, security included: the one way the project makes them."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

from infra.settings import Settings


def new_consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer of no group, reading from the beginning unless told otherwise."""
    defaults: dict[str, Any] = {"group_id": None, "enable_auto_commit": False, "auto_offset_reset": "earliest"}
    defaults.update(options)
    return AIOKafkaConsumer(
        *topics, bootstrap_servers=settings.kafka_bootstrap_servers, **defaults, **settings.kafka_client_options()
    )
