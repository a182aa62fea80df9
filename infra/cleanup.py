"""Removes what one isolated deployment (a test's, a benchmark run's) left on a shared broker and Redis:
the topics named with its prefix and the Redis keys under its key prefix. Left behind, they add up: a
development broker that had run the test suite a few times held 13,000 partitions and took longer to
start than `make infra-up` waits."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient

from infra.clients import redis_client
from infra.settings import Settings

UNLINK_BATCH = 5000


async def remove_deployment(bootstrap: str, redis: Settings, topic_prefix: str, redis_prefix: str,
                            timeout_s: float = 30.0) -> list[str]:
    """Deletes the topics whose names start with `topic_prefix` and the Redis keys under `redis_prefix`
    on the Redis that `redis` (the settings) names.
    Best effort (a fault test may leave its servers down): returns what could not be removed, one line
    each, for the caller to report."""
    problems = []
    for what, removal in (("topics", _delete_topics(bootstrap, topic_prefix)),
                          ("redis keys", _unlink_keys(redis, redis_prefix))):
        try:
            await asyncio.wait_for(removal, timeout_s)
        except Exception as exc:  # reported by the caller; nothing else depends on the removal
            problems.append(f"could not remove the {what} of {topic_prefix!r}: {type(exc).__name__}: {exc}")
    return problems


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def _unlink_keys(settings: Settings, prefix: str) -> None:
    """On the settings' Redis, or their Redis Cluster, whose every node it scans."""
    redis = redis_client(settings, decode_responses=False)
    try:
        batch = []
        async for key in redis.scan_iter(match=f"{prefix}*", count=UNLINK_BATCH):
            batch.append(key)
            if len(batch) >= UNLINK_BATCH:
                await redis.unlink(*batch)
                batch = []
        if batch:
            await redis.unlink(*batch)
    finally:
        await redis.aclose()
