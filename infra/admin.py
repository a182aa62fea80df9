"""Applies the topic plan through the Kafka admin API, changing only what it must: it creates missing
topics; on existing ones it sets only the configs the pipeline needs (never touching another, since
an operator's overrides are theirs), leaves tunable ones (retention) as they are, and adds partitions
only when told, since that moves keys to other partitions. Each change, or each change it would make,
is reported."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String

from infra.topics import TopicSpec

# IncrementalAlterConfigs (KIP-339), which aiokafka lacks: AlterConfigs replaces a topic's whole set
# of overrides, so sending the plan's would reset every other one an operator set.
SET = 0


class IncrementalAlterConfigsResponse_v0(Response):
    API_KEY = 44
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("responses", Array(("error_code", Int16), ("error_message", String("utf-8")), ("resource_type", Int8),
                            ("resource_name", String("utf-8")))),
    )


class IncrementalAlterConfigsRequest_v0(RequestStruct):
    API_KEY = 44
    API_VERSION = 0
    RESPONSE_TYPE = IncrementalAlterConfigsResponse_v0
    SCHEMA = Schema(
        ("resources", Array(("resource_type", Int8), ("resource_name", String("utf-8")),
                            ("configs", Array(("name", String("utf-8")), ("config_operation", Int8),
                                              ("value", String("utf-8")))))),
        ("validate_only", Boolean),
    )


class IncrementalAlterConfigsRequest(Request[IncrementalAlterConfigsRequest_v0]):
    API_KEY = 44

    def __init__(self, resources: list[Any]) -> None:
        self._resources = resources

    def build(self, request_struct_class: type[IncrementalAlterConfigsRequest_v0]) -> IncrementalAlterConfigsRequest_v0:
        return request_struct_class(self._resources, False)


@dataclass(frozen=True)
class Change:
    topic: str
    # created | partitions | configs | unchanged; refused (partitions not added without
    # allow_repartition); kept (a tunable config left as the topic has it); differs (create_only)
    action: str
    detail: str = ""
    # What carrying it out sets: the configs (for configs), the partition count (for partitions).
    configs: dict[str, str] = field(default_factory=dict, compare=False)
    partitions: int = 0

    @property
    def changes_something(self) -> bool:
        return self.action in ("created", "partitions", "configs")


@dataclass(frozen=True)
class Options:
    dry_run: bool = False  # report what would change, change nothing
    allow_repartition: bool = False  # add partitions to existing topics when the plan has more
    create_only: bool = False  # create missing topics, change no existing one


async def apply_plan(admin: AIOKafkaAdminClient, specs: list[TopicSpec], options: Options = Options()) -> list[Change]:
    existing = set(await admin.list_topics())
    changes: list[Change] = []
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        if not options.dry_run:
            await _create(admin, missing)
        changes += [Change(s.name, "created", f"{s.partitions} partitions") for s in missing]
    present = [spec for spec in specs if spec.name in existing]
    if not present:
        return changes
    partitions = await _partition_counts(admin, [s.name for s in present])
    configs = await _configs(admin, [s.name for s in present])
    for spec in present:
        found = _differences(spec, partitions[spec.name], configs[spec.name], options)
        changes += found or [Change(spec.name, "unchanged")]
    if not options.dry_run:
        await _carry_out(admin, changes)
    return changes


def _differences(spec: TopicSpec, partitions: int, configs: dict[str, str], options: Options) -> list[Change]:
    """What applying `spec` to a topic with these partitions and configs changes, or would."""
    found: list[Change] = []
    if partitions < spec.partitions:
        detail = f"{partitions} -> {spec.partitions}"
        if options.create_only:
            found.append(Change(spec.name, "differs", f"partitions {detail}"))
        elif options.allow_repartition:
            found.append(Change(spec.name, "partitions", detail, partitions=spec.partitions))
        else:
            found.append(Change(spec.name, "refused", f"partitions {detail}: adding partitions moves keys "
                                                      "(see `geodispatch topics apply --help`)"))
    required = {k: v for k, v in spec.configs.items() if configs.get(k) != v}
    if required:
        detail = ", ".join(f"{k}={v}" for k, v in required.items())
        found.append(Change(spec.name, "differs" if options.create_only else "configs", detail, configs=required))
    tuned = {k: (configs.get(k), v) for k, v in spec.initial_configs.items() if configs.get(k) != v}
    if tuned:
        found.append(Change(spec.name, "kept", ", ".join(f"{k}={have} (plan: {want})" for k, (have, want)
                                                        in tuned.items())))
    return found


async def _carry_out(admin: AIOKafkaAdminClient, changes: list[Change]) -> None:
    widen = {c.topic: NewPartitions(c.partitions) for c in changes if c.action == "partitions"}
    if widen:
        await admin.create_partitions(widen)
    altered = {c.topic: c.configs for c in changes if c.action == "configs"}
    if altered:
        await incremental_alter(admin, altered)


async def incremental_alter(admin: AIOKafkaAdminClient, configs: dict[str, dict[str, str]]) -> None:
    """Sets these configs of these topics, and only those: every other override stays as it is."""
    resources = [(ConfigResourceType.TOPIC, topic, [(name, SET, value) for name, value in values.items()])
                 for topic, values in configs.items()]
    client = admin._client  # noqa: SLF001 (aiokafka's admin has no IncrementalAlterConfigs of its own)
    response = await client.send(client.get_random_node(), IncrementalAlterConfigsRequest(resources))
    for error_code, error_message, _, topic in response.responses:
        if error_code:
            raise for_code(error_code)(f"{topic}: {error_message}")


async def _create(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    new = [NewTopic(s.name, s.partitions, s.replication, topic_configs={**s.initial_configs, **s.configs})
           for s in specs]
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
