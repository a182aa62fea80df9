"""Applies the topic plan through the Kafka admin API: creates what is missing, widens and re-configures
what differs, and reports each change. Safe to run any number of times."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from infra.topics import TopicSpec


@dataclass(frozen=True)
class Change:
    topic: str
    action: str  # created | partitions | configs | unchanged
    detail: str = ""


async def apply_plan(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> list[Change]:
    existing = set(await admin.list_topics())
    changes: list[Change] = []
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        await _create(admin, missing)
        changes += [Change(s.name, "created", f"{s.partitions} partitions") for s in missing]
    present = [spec for spec in specs if spec.name in existing]
    if not present:
        return changes
    partitions = await _partition_counts(admin, [s.name for s in present])
    widen = {s.name: NewPartitions(s.partitions) for s in present if partitions[s.name] < s.partitions}
    if widen:
        await admin.create_partitions(widen)
        changes += [Change(n, "partitions", f"{partitions[n]} -> {p.total_count}") for n, p in widen.items()]
    configs = await _configs(admin, [s.name for s in present])
    for spec in present:
        differing = {k: v for k, v in spec.configs.items() if configs[spec.name].get(k) != v}
        if differing:
            # AlterConfigs replaces the topic's whole set of overrides, so send all of the plan's.
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name, configs=dict(spec.configs))])
            changes.append(Change(spec.name, "configs", ", ".join(f"{k}={v}" for k, v in differing.items())))
        elif spec.name not in widen:
            changes.append(Change(spec.name, "unchanged"))
    return changes


async def _create(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    new = [NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.configs)) for s in specs]
    # Another process may create them between our listing and our create: the goal is met all the same.
    with contextlib.suppress(TopicAlreadyExistsError):
        await admin.create_topics(new)


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    described = await admin.describe_topics(names)
    return {topic["topic"]: len(topic["partitions"]) for topic in described}


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    result: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            name, entries = resource[3], resource[4]
            result[name] = {entry[0]: entry[1] for entry in entries}
    return result
