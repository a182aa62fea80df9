"""What moves when a deployment changes shape. Requests are read by the deployment's consumer group
when one process runs every stream role, and by a group of their own when processes run the
assignments role alone (Settings.faust_app_id). A group reading requests for the first time, or again
after a while in the other shape, would start where it stopped long ago, or at the start of the
topics' retention: every request since would be answered again (as a repeat, or as expired once its
decision was swept). So a process of the assignments role starts its group where the other group
got to, wherever that is further on."""

from __future__ import annotations

import structlog
from aiokafka import TopicPartition

from infra.clients import committed_offsets, new_consumer
from infra.settings import Settings
from infra.topics import TopicNames

log = structlog.get_logger(__name__)


def further_on(own: dict[TopicPartition, int], other: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """The partitions where the other group got further than this one, and how far."""
    return {tp: offset for tp, offset in other.items() if offset > own.get(tp, -1)}


async def carry_request_offsets(settings: Settings) -> dict[TopicPartition, int]:
    """Commits, in this process's group, the request offsets the other shape's group got further with;
    returns them. Fails when this group has members: the other shape still runs (stop it first)."""
    own = settings.faust_app_id
    other = settings.assignments_group if own == settings.deployment_group else settings.deployment_group
    names = TopicNames(settings.topic_prefix)
    tps = [TopicPartition(names.requests(region), p) for region in settings.regions for p in range(settings.partitions)]
    ahead = further_on(await committed_offsets(settings, own, tps), await committed_offsets(settings, other, tps))
    if not ahead:
        return ahead
    consumer = new_consumer(settings, group_id=own)
    await consumer.start()
    try:
        consumer.assign(list(ahead))
        await consumer.commit(ahead)
    finally:
        await consumer.stop()
    log.info("request_offsets_carried", from_group=other, to_group=own,
             offsets={f"{tp.topic}:{tp.partition}": offset for tp, offset in ahead.items()})
    return ahead
