"""Kafka and Redis clients built from the settings, security included: the one way the project makes them."""

from __future__ import annotations

from typing import Any

import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

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


def redis_client(settings: Settings, decode_responses: bool = True) -> Redis | RedisCluster:
    """The deployment's Redis: a Redis Cluster when REDIS_CLUSTER_NODES names its nodes, else REDIS_URL."""
    if settings.redis_cluster_nodes:
        nodes = [ClusterNode(host, port) for host, port in _cluster_nodes(settings.redis_cluster_nodes)]
        return RedisCluster(startup_nodes=nodes, decode_responses=decode_responses, health_check_interval=30)
    return Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=decode_responses,
                          health_check_interval=30)


def blocking_redis_client(settings: Settings, decode_responses: bool = True) -> redis.Redis | redis.RedisCluster:
    """redis_client's blocking twin, for the tools that run outside an event loop (tests, benchmarks)."""
    if settings.redis_cluster_nodes:
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in _cluster_nodes(settings.redis_cluster_nodes)]
        return redis.RedisCluster(startup_nodes=nodes, decode_responses=decode_responses)
    return redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=decode_responses)


def _cluster_nodes(nodes: str) -> list[tuple[str, int]]:
    """host:port pairs of a comma-separated list."""
    pairs = [node.strip().rsplit(":", 1) for node in nodes.split(",") if node.strip()]
    return [(host, int(port)) for host, port in pairs]
