"""Every Redis key of the project, named in one place from a deployment's prefix
(GEODISPATCH_REDIS_PREFIX): the worker's index, its reservations and decisions, the DLQ tools' ledger."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str

    def driver(self, driver_id: str) -> str:
        """A hash per driver: session document, position, version, the writer's fence token."""
        return f"{self.prefix}d:{driver_id}"

    def reservation(self, driver_id: str) -> str:
        """The order holding the driver, until its trip ends."""
        return f"{self.prefix}r:{driver_id}"

    def decision(self, order_id: str) -> str:
        """An order's decision, kept for the decision retention."""
        return f"{self.prefix}o:{order_id}"

    @property
    def available(self) -> str:
        """A GEO set of every available driver: the assignment's nearest-first search."""
        return f"{self.prefix}geo:available"

    def cells(self, resolution: int) -> str:
        """The prefix of the sets of available drivers per H3 cell of that resolution (`nearby`)."""
        return f"{self.prefix}c{resolution}:"

    @property
    def epoch(self) -> str:
        """The index's epoch: gone when Redis was emptied, new when a rebuild is asked for."""
        return f"{self.prefix}meta:epoch"

    def ready(self, partition: int) -> str:
        """Marks a partition's part of the index as rebuilt since Redis was last emptied."""
        return f"{self.prefix}meta:ready:{partition}"

    def dlq_replayed(self, dlq_topic: str) -> str:
        """The DLQ tools' ledger of what was replayed from that dead-letter topic."""
        return f"{self.prefix}dlq:replayed:{dlq_topic}"
