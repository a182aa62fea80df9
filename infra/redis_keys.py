"""Every Redis key of the project, named in one place from a deployment's prefix
(GEODISPATCH_REDIS_PREFIX): the worker's index, its reservations and decisions, the DLQ tools' ledger.

The part of a key in braces is its Redis Cluster hash tag: keys with the same tag share a hash slot,
so one script may touch them together. Three kinds of group, each touched by its own scripts
(streams/lua/): a driver partition's drivers, reservations and readiness flag (`{p<partition>}`),
written by the partition's one owner and reserved by every assignment worker; a request partition's
decisions (`{o<partition>}`); and a shard cell's spatial hints, the available drivers to search
(`{s<cell>}`, an H3 cell of `Settings.redis_shard_resolution`). On a single Redis the tags change
nothing."""

from __future__ import annotations

from dataclasses import dataclass

from infra.topics import key_partition


@dataclass(frozen=True)
class RedisKeys:
    prefix: str
    # The deployment's partition count (GEODISPATCH_PARTITIONS): a driver's keys go with its partition.
    partitions: int = 1

    def partition(self, key: str) -> int:
        """The partition of a driver or order id: its records' partition (infra.topics.key_partition)."""
        return key_partition(key.encode(), self.partitions)

    def driver(self, driver_id: str) -> str:
        """A hash per driver: session document, position, availability, version, the writer's fence
        token, and the shard whose hints hold it."""
        return f"{self.prefix}d:{{p{self.partition(driver_id)}}}:{driver_id}"

    def reservation(self, driver_id: str) -> str:
        """The order holding the driver, until its trip ends."""
        return f"{self.prefix}r:{{p{self.partition(driver_id)}}}:{driver_id}"

    def ready(self, partition: int) -> str:
        """Marks a driver partition's part of the index as rebuilt since Redis (or the slot) was last
        emptied: in the partition's slot, so it is lost together with what it vouches for."""
        return f"{self.prefix}ready:{{p{partition}}}"

    def decision(self, order_id: str) -> str:
        """An order's decision, kept for the decision retention."""
        return f"{self.prefix}o:{{o{self.partition(order_id)}}}:{order_id}"

    def available(self, shard: str) -> str:
        """A GEO set of the available drivers in a shard cell: the candidate and nearby searches'."""
        return f"{self.prefix}geo:{{s{shard}}}"

    def fixes(self, shard: str) -> str:
        """A hash of the same drivers' last fix, "<epoch ms> <resolution-9 cell>": what a search needs
        to leave out stale positions and cells outside its ring without leaving the shard's slot."""
        return f"{self.prefix}fix:{{s{shard}}}"

    @property
    def epoch(self) -> str:
        """The index's epoch: gone when Redis was emptied, new when a rebuild is asked for."""
        return f"{self.prefix}meta:epoch"

    def dlq_replayed(self, dlq_topic: str) -> str:
        """The DLQ tools' ledger of what was replayed from that dead-letter topic."""
        return f"{self.prefix}dlq:replayed:{dlq_topic}"

    @staticmethod
    def named(key: str) -> str:
        """The driver or order id a driver, reservation or decision key names: what follows its tag."""
        return key.split("}:", 1)[1]
