"""The topic plan: every topic of the contract, its partitions and configs, and the region key rule."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from aiokafka.partitioner import murmur2

DAY_MS = 24 * 3600 * 1000
# A dead letter is the failed record's key, value and headers plus ours (at most a few kB): the DLQ
# must take more than any input topic does (the broker's message.max.bytes, 1 MiB), or a record just
# under that limit could not be dead-lettered. The worker's producer allows the same size.
DLQ_MAX_MESSAGE_BYTES = 2 * 1_048_576

LOCATIONS = "driver_locations"
STATUS = "driver_status"
REQUESTS = "driver_assignment.requests"
RESPONSES = "driver_assignment.responses"
TRIP_EVENTS = "trip_events"
PRESENCE = "driver_presence"
TRACKING = "booking_tracking"
DLQ = "dispatch.dlq"
# Compacted, keyed by a dead letter's coordinates (<dlq topic>:<partition>:<offset>): what `geodispatch
# dlq replay` replayed, so that the same dead letter is not replayed twice by accident (consumers.dlq).
DLQ_REPLAYS = "dispatch.dlq_replays"
# Internal, keyed by driver: the assignment agent and the liveness timer ask the sessions agent (which
# owns the driver's state) to record a trip or to check a heartbeat.
DRIVER_COMMANDS = "dispatch.driver_commands"
# Compacted: available drivers and demand per H3 cell, one record per cell, kind and source partition
# (streams.supply_demand writes it, consumers.supply_demand reads it).
SUPPLY_DEMAND = "dispatch.supply_demand"
# Compacted, keyed by booking id: who owns each booking (the order service writes it), read whole by the
# real-time gateway for its access checks (consumers.gateway).
BOOKING_OWNERS = "booking_owners"
# Internal, one partition: a record per partition assignment of a worker, whose offset is the worker's
# fence token from then on (streams.logic.fencing). Only the offsets matter, so a day's retention does;
# deleting the topic would restart them (docs/RELIABILITY.md).
FENCES = "dispatch.fences"
# The worker's tables, each with its changelog topic (faust's naming: "{app id}-{table}-changelog").
SESSIONS_TABLE = "driver_sessions"
DECISIONS_TABLE = "assignment_decisions"
TABLES = (SESSIONS_TABLE, DECISIONS_TABLE)


def region_key(lat: float, lng: float) -> str:
    """trunc(lat/10)_trunc(lng/10), truncating toward zero: 40.7128, -74.006 gives 4_-7."""
    if not (math.isfinite(lat) and math.isfinite(lng)):
        raise ValueError("coordinates must be finite numbers")
    return f"{math.trunc(lat / 10)}_{math.trunc(lng / 10)}"


# aiokafka's murmur2 is pure Python, and every ping needs its key's partition twice
# (the routing check, the index's readiness key): a fleet's driver ids are remembered.
@functools.lru_cache(maxsize=1 << 18)
def key_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (Java client, aiokafka, kafkajs): murmur2 of the key bytes."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    # What the pipeline needs of the topic (say, its cleanup policy): set on every apply.
    configs: dict[str, str] = field(default_factory=dict)
    # Starting values an operator may tune (retention): set when the topic is created, then left alone.
    initial_configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicNames:
    """Every topic name, with the deployment's prefix applied; the one place names are built."""

    prefix: str = ""

    def locations(self, region: str) -> str:
        return f"{self.prefix}{LOCATIONS}.{region}"

    def requests(self, region: str) -> str:
        return f"{self.prefix}{REQUESTS}.{region}"

    def locations_pattern(self) -> str:
        return "^" + (self.prefix + LOCATIONS).replace(".", r"\.") + r"\.[^.]+$"

    def requests_pattern(self) -> str:
        return "^" + (self.prefix + REQUESTS).replace(".", r"\.") + r"\.[^.]+$"

    @property
    def status(self) -> str:
        return self.prefix + STATUS

    @property
    def responses(self) -> str:
        return self.prefix + RESPONSES

    @property
    def trip_events(self) -> str:
        return self.prefix + TRIP_EVENTS

    @property
    def presence(self) -> str:
        return self.prefix + PRESENCE

    @property
    def tracking(self) -> str:
        return self.prefix + TRACKING

    @property
    def dlq(self) -> str:
        return self.prefix + DLQ

    @property
    def dlq_replays(self) -> str:
        return self.prefix + DLQ_REPLAYS

    @property
    def driver_commands(self) -> str:
        return self.prefix + DRIVER_COMMANDS

    @property
    def supply_demand(self) -> str:
        return self.prefix + SUPPLY_DEMAND

    @property
    def booking_owners(self) -> str:
        return self.prefix + BOOKING_OWNERS

    @property
    def fences(self) -> str:
        return self.prefix + FENCES

    def changelog(self, app_id: str, table: str) -> str:
        return f"{self.prefix}{app_id}-{table}-changelog"


def min_insync_replicas(replication: int) -> int:
    """Replicas that must have a write before it is acknowledged (the producers use acks=all): a
    majority from three replicas up, so that losing one broker neither loses an acknowledged record nor
    stops writes; one below three, where a majority would stop writes whenever a broker is down."""
    return replication // 2 + 1 if replication >= 3 else 1


def plan(names: TopicNames, regions: tuple[str, ...], partitions: int, replication: int,
         app_id: str = "geodispatch") -> list[TopicSpec]:
    """All topics of the contract, and the changelogs of the worker's tables (faust would create them
    at start; planned, they are widened with the rest). Every topic keyed by driver or order shares one
    partition count so that a key's records always meet on the same partition number."""
    durable = {"min.insync.replicas": str(min_insync_replicas(replication))}
    events, pings = {"cleanup.policy": "delete", **durable}, {"cleanup.policy": "delete", **durable}
    events_kept, pings_kept = {"retention.ms": str(7 * DAY_MS)}, {"retention.ms": str(DAY_MS)}
    # The DLQ is kept long: operators replay from it days later.
    dead_letters = {"cleanup.policy": "delete", "max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES), **durable}
    dead_letters_kept = {"retention.ms": str(30 * DAY_MS)}
    specs = [TopicSpec(names.locations(r), partitions, replication, pings, pings_kept) for r in regions]
    specs += [TopicSpec(names.requests(r), partitions, replication, events, events_kept) for r in regions]
    specs += [
        TopicSpec(names.status, partitions, replication, events, events_kept),
        TopicSpec(names.responses, partitions, replication, events, events_kept),
        TopicSpec(names.trip_events, partitions, replication, events, events_kept),
        TopicSpec(names.driver_commands, partitions, replication, events, events_kept),
        TopicSpec(names.presence, partitions, replication, events, events_kept),
        TopicSpec(names.tracking, partitions, replication, pings, pings_kept),
        TopicSpec(names.dlq, 1, replication, dead_letters, dead_letters_kept),
        # One partition: one sequence of offsets orders every worker's assignments.
        TopicSpec(names.fences, 1, replication, events, pings_kept),
    ]
    compacted = {"cleanup.policy": "compact", **durable}
    # One partition whatever GEODISPATCH_PARTITIONS: its keys name the source partition already, and a
    # topic widened later would keep each key's older records on the partition it left. Segments roll
    # hourly so that compaction (which never touches the active segment) keeps it small.
    specs.append(TopicSpec(names.supply_demand, 1, replication, compacted, {"segment.ms": str(3600 * 1000)}))
    specs.append(TopicSpec(names.booking_owners, partitions, replication, compacted))
    # One partition: the DLQ tools read it whole (it grows with what was replayed, not with the DLQ).
    specs.append(TopicSpec(names.dlq_replays, 1, replication, compacted))
    specs += [TopicSpec(names.changelog(app_id, table), partitions, replication, compacted) for table in TABLES]
    return specs
