"""Growing a stopped deployment's partition count without losing a driver's session or an order's
decision (`geodispatch topics grow`, docs/SCALING.md).

Adding partitions moves keys: a driver whose id now hashes to another partition has his later records
there, while his session lies in the old partition of the sessions changelog, and his keys in Redis
carry the old partition's hash tag (infra.redis_keys). So, with every worker stopped, the growth
1. widens every keyed topic and both changelogs together (infra.admin, as `topics apply
   --allow-repartition`);
2. moves each table entry whose key now belongs to another partition: a copy to its new partition
   first, then a tombstone in the old one, so that an interrupted run loses nothing and a second run
   finishes it (an entry already in its new partition is not overwritten);
3. moves the driver, reservation and decision keys of Redis to their new partitions' tags, with their
   time to live, and starts a new index epoch, so that every worker rewrites its partitions' part of
   the index on start.
Records of the input topics not yet read when the workers stopped are moved by the worker that reads
them (streams.routing: a record on another partition than its key's is sent on)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from infra.admin import Options, apply_plan
from infra.clients import new_consumer, redis_client
from infra.redis_keys import RedisKeys
from infra.settings import Settings
from infra.topics import TABLES, TopicNames, key_partition, plan

# Consumer group states with no member: a group in any other state has a worker running.
IDLE_GROUP_STATES = ("Empty", "Dead")
# A driver, reservation or decision key after the prefix: its kind, its partition's tag, the id.
TAGGED_KEY = re.compile(rb"^[dro]:\{[po]\d+\}:(?P<id>.*)$", re.DOTALL)
# How long the brokers may take to show every client the widened topics.
METADATA_WAIT_S = 30.0


class WorkersRunning(RuntimeError):
    """A worker of the deployment is still in its consumer group: growing under it would split a
    driver's records between the old and new partitions while it writes."""


@dataclass(frozen=True)
class Move:
    """A table entry to carry from one changelog partition to another."""

    key: bytes
    value: bytes
    source: int
    target: int


@dataclass
class Growth:
    """What a run did."""

    partitions_before: int = 0
    partitions: int = 0
    topics_widened: int = 0
    entries_moved: dict[str, int] = field(default_factory=dict)
    entries_already_moved: dict[str, int] = field(default_factory=dict)
    redis_keys_moved: int = 0


def moves(latest: Mapping[tuple[int, bytes], bytes | None], partitions: int) -> tuple[list[Move], int]:
    """Of a changelog's latest entry per (partition, key), None for deleted: the live entries whose key
    belongs to another partition of `partitions`, each with where it goes; and how many of those
    already have a live entry there (an interrupted run's copy, or newer), which only the tombstone of
    the old one is left for (target == source marks nothing to copy)."""
    found, already = [], 0
    for (partition, key), value in latest.items():
        target = key_partition(key, partitions)
        if value is None or target == partition:
            continue
        if latest.get((target, key)) is not None:
            already += 1
            found.append(Move(key, value, partition, partition))
        else:
            found.append(Move(key, value, partition, target))
    return found, already


async def grow(settings: Settings, progress: Callable[[str], None] = lambda line: None) -> Growth:
    """Grows the deployment of `settings` to settings.partitions (see the module's doc)."""
    names = TopicNames(settings.topic_prefix)
    changelogs = [names.changelog(settings.app_id, table) for table in TABLES]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **settings.kafka_client_options())
    await admin.start()
    try:
        await _refuse_running_workers(admin, [settings.deployment_group, settings.assignments_group])
        growth = Growth(partitions=settings.partitions)
        growth.partitions_before = await _partition_count(admin, changelogs[0])
        specs = plan(names, settings.regions, settings.partitions, settings.replication_factor, settings.app_id)
        changes = await apply_plan(admin, specs, Options(allow_repartition=True))
        growth.topics_widened = sum(1 for change in changes if change.action == "partitions")
        for changelog in changelogs:
            await _wait_widened(admin, changelog, settings.partitions)
        progress(f"topics: {growth.topics_widened} widened to {settings.partitions} partitions")
    finally:
        await admin.close()
    for changelog in changelogs:
        moved, already = await _move_entries(settings, changelog)
        growth.entries_moved[changelog], growth.entries_already_moved[changelog] = moved, already
        progress(f"{changelog}: {moved} entries moved to their new partitions, {already} had been already")
    growth.redis_keys_moved = await _move_redis_keys(settings, progress)
    return growth


async def _refuse_running_workers(admin: AIOKafkaAdminClient, groups: list[str]) -> None:
    for group_id in groups:
        # One group per request: aiokafka misreads a DescribeGroups answer about several.
        (response,) = await admin.describe_consumer_groups([group_id])
        for group in response.groups:
            state, members = group[2], group[5]
            if state not in IDLE_GROUP_STATES or members:
                raise WorkersRunning(f"consumer group {group_id} has {len(members)} member(s) ({state}): "
                                     "stop every worker of the deployment first")


async def _wait_widened(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    """Until the brokers' metadata shows the topic's new partitions to every client."""
    deadline = asyncio.get_running_loop().time() + METADATA_WAIT_S
    while await _partition_count(admin, topic) < partitions:
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{topic} does not show {partitions} partitions after {METADATA_WAIT_S:.0f} s")
        await asyncio.sleep(0.2)


async def _partition_count(admin: AIOKafkaAdminClient, topic: str) -> int:
    (description,) = await admin.describe_topics([topic])
    return len(description["partitions"])


async def _move_entries(settings: Settings, changelog: str) -> tuple[int, int]:
    """Moves one changelog's entries to their keys' partitions; returns (moved, already there)."""
    latest = await _latest_entries(settings, changelog)
    found, already = moves(latest, settings.partitions)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                enable_idempotence=True, **settings.kafka_client_options())
    await producer.start()
    try:
        # Every copy acknowledged before the first tombstone: a run cut short leaves entries twice,
        # which the next run settles, never nowhere.
        copies = [await producer.send(changelog, move.value, key=move.key, partition=move.target)
                  for move in found if move.target != move.source]
        await asyncio.gather(*copies)
        tombstones = [await producer.send(changelog, None, key=move.key, partition=move.source) for move in found]
        await asyncio.gather(*tombstones)
    finally:
        await producer.stop()
    return len(found) - already, already


async def _latest_entries(settings: Settings, changelog: str) -> dict[tuple[int, bytes], bytes | None]:
    """Each key's latest entry per partition of the changelog, read to its end."""
    consumer = new_consumer(settings, max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        partitions = [TopicPartition(changelog, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        latest: dict[tuple[int, bytes], bytes | None] = {}
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp]:
                        latest[(tp.partition, record.key)] = record.value
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return latest
    finally:
        await consumer.stop()


async def _move_redis_keys(settings: Settings, progress: Callable[[str], None]) -> int:
    """Moves the driver, reservation and decision keys whose partition tag is not their id's partition
    any more, each with its time to live, and starts a new index epoch; returns how many moved."""
    keys = RedisKeys(settings.redis_prefix, settings.partitions)
    kinds = {b"d": keys.driver, b"r": keys.reservation, b"o": keys.decision}
    client = redis_client(settings, decode_responses=False)
    prefix = settings.redis_prefix.encode()
    moved = 0
    try:
        for kind in kinds:
            async for key in client.scan_iter(match=prefix + kind + b":{*", count=5000):
                match = TAGGED_KEY.match(key[len(prefix):])
                if match is None:
                    continue
                target = kinds[kind](match["id"].decode()).encode()
                if target == key:
                    continue
                dump, ttl = await client.dump(key), await client.pttl(key)
                if dump is None:  # expired since the scan found it
                    continue
                await client.restore(target, max(ttl, 0), dump, replace=True)
                await client.delete(key)
                moved += 1
                if moved % 10_000 == 0:
                    progress(f"redis: {moved} keys moved so far")
        await client.set(keys.epoch, uuid.uuid4().hex)
    finally:
        await client.aclose()
    progress(f"redis: {moved} keys moved to their new partitions; new index epoch")
    return moved
