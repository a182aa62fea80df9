"""The changelog-backed tables, each fronted by an in-memory cache of this worker's partitions.

A Faust table write is a changelog record; a read from RocksDB is a lookup and a decode. The cache
makes reads free and is dropped on every rebalance, because a partition this worker gave up may
have changed elsewhere before it comes back."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import Any

import faust
import orjson
import structlog
from faust.types import TP

from streams.dlq import WorkerFailure
from streams.logic.assignment import Decision
from streams.logic.fencing import Fence, Stamp, advances_persisted_offset, entries_to_keep
from streams.logic.sessions import DriverSession
from streams.logic.supply_demand import SupplyCounts
from streams.restore import BulkRestore
from streams.runtime import PartitionService

log = structlog.get_logger(__name__)
# The writer's fence token, stored beside the session's own fields in each changelog value.
FENCE_FIELD = "fence"


class DirectTable(faust.Table):
    """A table of bytes whose writes (`write`, to the partition of the key's records) hand their
    changelog record to the Kafka producer directly. `table[key] = value` goes through faust's
    own send path (a FutureMessage, the send buffer, the task that drains it), a sixth of a ping's CPU
    when measured (bench/README.md). What faust guarantees still
    holds: the record is acknowledged before the input offset is committed (faust flushes the
    producer first), and its acknowledgement advances the store's persisted offset
    (`_on_changelog_sent`)."""

    def __init__(
        self, *args: Any, changelog: str, on_write_failed: Callable[[], None], bulk_restore: BulkRestore,
        on_store_failed: Callable[[], None], **kwargs: Any
    ) -> None:
        self._changelog_topic_named = changelog  # read by faust's constructor
        super().__init__(*args, **kwargs)
        self._on_write_failed = on_write_failed
        self._on_store_failed = on_store_failed
        self._bulk_restore = bulk_restore

    def _changelog_topic_name(self) -> str:
        # Named by the deployment, not by faust's app id: a process of the assignments role alone is
        # in a consumer group of its own (Settings.faust_app_id) and keeps the same decisions.
        return self._changelog_topic_named

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                           generation_id: int = 0) -> None:
        """Opens the stores of the assigned partitions (faust), then catches up in bulk those newly
        assigned and far behind their changelog, before faust's recovery reads the rest
        (streams/restore.py). A partition this worker kept was current a moment ago: asking its
        offsets would only lengthen the rebalance."""
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        standbys = self.app.assignor.assigned_standbys()
        actives = {tp for tp in newly_assigned if tp.topic == self._changelog_name and tp not in standbys}
        await self._bulk_restore.catch_up(self, actives, lambda: self.app.consumer_generation_id == generation_id)

    async def write(self, key: bytes, value: bytes, partition: int) -> None:
        """Writes to the store and the changelog of `partition`, the partition of the record being
        applied: faust's own `table[key] = value` takes it from the faust event being processed, which
        pings, read in batches by a consumer of their own (streams/agents/pings.py), do not have. The
        store is faust's RocksDB store, written as its own `_set` does."""
        store = self.data
        store._key_index[key] = partition
        await self._into_store(partition, lambda db: db.put(key, value))
        acknowledgement = await self.app.producer.send(self._changelog_name, key, value, partition, None, None)
        acknowledgement.add_done_callback(self._on_written)

    async def delete(self, key: bytes, partition: int) -> None:
        """Removes `key` from the store and writes its tombstone to the changelog of `partition`, so that
        compaction drops it there too and no restore brings it back."""
        store = self.data
        store._key_index.pop(key, None)
        await self._into_store(partition, lambda db: db.delete(key))
        acknowledgement = await self.app.producer.send(self._changelog_name, key, None, partition, None, None)
        acknowledgement.add_done_callback(self._on_written)

    async def _into_store(self, partition: int, change: Callable[[Any], None]) -> None:
        """Applies `change` to the RocksDB store of `partition`. A store that refuses it (RocksDB's IO
        errors, a full disk among them, come as bare Exceptions) refuses every later write until it is
        opened again, so the worker stops: crashed (a non-zero exit, its group left), with nothing acked
        from then on, so the record in hand goes to the partition's next owner instead of the
        dead-letter topic, and a restart opens the store again."""
        try:
            change(self.data._db_for_partition(partition))
        except Exception as exc:
            self._on_store_failed()
            log.critical("store_write_failed", table=self.name, partition=partition, error=str(exc),
                         action="the worker stops")
            failure = WorkerFailure(f"the store of {self.name}[{partition}] refused a write: {exc}")
            await self.app.crash(failure)
            raise failure from exc

    def active_partitions(self) -> list[int]:
        """The changelog partitions this worker owns (standbys, only replicas, excluded)."""
        actives = self.app.assignor.assigned_actives()
        return sorted(tp.partition for tp in actives if tp.topic == self._changelog_name)

    def entries(self, partition: int, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """The (key, value) pairs of one partition's store in key order, from `start` (included) on."""
        store = self.data
        for key, value in store._db_for_partition(partition).items(from_key=start):
            if key != store.offset_key:
                yield key, value

    @cached_property
    def _changelog_name(self) -> str:
        return self.changelog_topic.get_topic_name()

    def _on_written(self, acknowledgement: Any) -> None:
        if acknowledgement.cancelled() or acknowledgement.exception() is not None:
            # The store and this worker's reads have the value; a worker restoring the partition from
            # the changelog will not.
            self._on_write_failed()
            log.error("changelog_write_failed", table=self.name,
                      error="cancelled" if acknowledgement.cancelled() else repr(acknowledgement.exception()))
            return
        self._on_changelog_sent(acknowledgement)


def _table(cls: type[DirectTable], app: faust.App, name: str, changelog: str, partitions: int,
           **kwargs: Any) -> Any:
    table = cls(app, name=name, changelog=changelog, default=None, beacon=app.tables.beacon, partitions=partitions,
                key_type=bytes, value_type=bytes, **kwargs)
    return app.tables.add(table)


def direct_table(app: faust.App, name: str, changelog: str, partitions: int, on_write_failed: Callable[[], None],
                 bulk_restore: BulkRestore, on_store_failed: Callable[[], None]) -> Any:
    return _table(DirectTable, app, name, changelog, partitions, on_write_failed=on_write_failed,
                  bulk_restore=bulk_restore, on_store_failed=on_store_failed)


def session_stamp(raw: bytes | None) -> Stamp | None:
    """The (fence, version) of a stored session; values written before fencing count as fence 0."""
    if raw is None:
        return None
    data = orjson.loads(raw)
    return int(data.get(FENCE_FIELD, 0)), int(data.get("version", 0))


class FencedTable(DirectTable):
    """A sessions table whose restore from the changelog skips the late writes of a worker that had
    lost the driver's partition (paused past its session timeout): Faust's changelog writes are plain
    produce requests, so such a write can land after the new owner's and would otherwise win the
    next restore, bringing back a finished trip and the reservation it held."""

    def __init__(self, *args: Any, on_stale: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_stale = on_stale

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        events = list(batch)
        kept = entries_to_keep(
            ((e.message.key, session_stamp(e.message.value)) for e in events),
            lambda key: session_stamp(self.data.get(key)),
        )
        if len(kept) < len(events):
            self._on_stale(len(events) - len(kept))
            log.warning("changelog_stale_entries_skipped", table=self.name, skipped=len(events) - len(kept))
        super().apply_changelog_batch([events[i] for i in kept])
        # Read up to the batch's end, skipped entries included: the next restore starts after them.
        ends: dict[Any, int] = {}
        for event in events:
            tp = event.message.tp
            ends[tp] = max(ends.get(tp, -1), event.message.offset)
        for tp, offset in ends.items():
            self.data.set_persisted_offset(tp, offset)

    def _on_changelog_sent(self, fut: Any) -> None:
        # Faust makes each acknowledged write of ours the store's persisted offset, and the next restore
        # starts after it. A zombie's late write would then hide the new owner's entries from its restore.
        written = fut.result()
        persisted = self.data.persisted_offset(written.topic_partition)
        if not advances_persisted_offset(persisted, written.offset):
            log.warning("changelog_offset_kept", table=self.name, partition=written.topic_partition.partition,
                        persisted=persisted, written=written.offset)
            return
        super()._on_changelog_sent(fut)


def fenced_table(
    app: faust.App, name: str, changelog: str, partitions: int, on_write_failed: Callable[[], None],
    bulk_restore: BulkRestore, on_stale: Callable[[int], None], on_store_failed: Callable[[], None],
) -> Any:
    return _table(FencedTable, app, name, changelog, partitions, on_write_failed=on_write_failed,
                  bulk_restore=bulk_restore, on_stale=on_stale, on_store_failed=on_store_failed)


class SessionStore(PartitionService):
    """Driver sessions by driver id. Writes go to the partition of the driver's own records, and carry
    this worker's fence token so that a restore can tell the owner's writes from a zombie's. The cache
    in front of the table holds the sessions as they are now; the table holds every change but those
    of position, which the ping log gives back (streams.agents.sessions.recover_positions). The cache is
    dropped whenever partitions move, and filled again from the table and that log before any record of
    theirs is read."""

    def __init__(self, table: Any, fence: Fence, supply: SupplyCounts | None = None) -> None:
        self.table = table
        self.fence = fence
        self.cache: dict[str, DriverSession] = {}
        # Told of every session as it changes: the available drivers per cell (streams.supply_demand).
        self.supply = supply

    def get(self, driver_id: str) -> DriverSession | None:
        session = self.cache.get(driver_id)
        if session is None:
            raw = self.table.get(driver_id.encode())
            if raw is not None:
                session = DriverSession.from_dict(orjson.loads(raw))
                self.cache[driver_id] = session
        return session

    async def put(self, session: DriverSession, partition: int) -> None:
        self.cache[session.driver_id] = session
        if self.supply is not None:
            self.supply.saw(session)
        await self._write(session, partition)

    def remember(self, session: DriverSession) -> None:
        """The session from now on, for this worker's reads; the table gets it with `write_all` if its
        change is one the ping log cannot give back."""
        self.cache[session.driver_id] = session
        if self.supply is not None:
            self.supply.saw(session)

    async def write_all(self, sessions: Iterable[tuple[DriverSession, int]]) -> None:
        """Writes each (session, partition) to the table: a batch's last version of each driver."""
        for session, partition in sessions:
            await self._write(session, partition)

    async def _write(self, session: DriverSession, partition: int) -> None:
        await self.table.write(session.driver_id.encode(),
                               orjson.dumps({**session.to_dict(), FENCE_FIELD: self.fence.token}), partition)

    async def restored(self, partitions: set[int]) -> None:
        """Sessions read while the tables were restored (an HTTP request, a rebuild that began before
        the rebalance) came from a store that did not yet hold the restored changelog."""
        self.cache.clear()
        if self.supply is not None:
            self.supply.clear()

    async def revoked(self) -> None:
        """A partition given up may change elsewhere before it comes back."""
        self.cache.clear()
        if self.supply is not None:
            self.supply.clear()

    def load_all(self) -> list[DriverSession]:
        """Every session of this worker's partitions: those of the cache, which are at least as new as
        the table's and include drivers known by their pings alone, and the rest read from the table."""
        cache = self.cache
        for key, raw in self.table.items():
            if key.decode() not in cache:
                session = DriverSession.from_dict(orjson.loads(raw))
                cache[session.driver_id] = session
        if self.supply is not None:
            # Every session of the partitions seen: the available drivers' counts are whole.
            self.supply.saw_all(cache.values())
            self.supply.complete = True
        return list(cache.values())


class DecisionStore:
    """Assignment decisions by order id: the answer an order got, to give again on redelivery, kept for
    their retention. Expired ones are found by a sweep that reads a bounded number of entries a call,
    one partition at a time, from where the last call stopped, so that a table of millions costs the
    worker a steady trickle instead of a pause."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._turn = 0  # which of the active partitions the sweep reads
        self._resume: dict[int, bytes] = {}  # partition -> the key its next read starts from

    def get(self, order_id: str) -> Decision | None:
        raw = self.table.get(order_id.encode())
        return Decision.from_record(orjson.loads(raw)) if raw is not None else None

    async def put(self, decision: Decision, partition: int) -> None:
        await self.table.write(decision.order_id.encode(), orjson.dumps(decision.record()), partition)

    async def delete(self, order_id: bytes, partition: int) -> None:
        await self.table.delete(order_id, partition)

    def expired(self, keep: Callable[[Decision], bool], budget: int) -> list[tuple[bytes, int]]:
        """(key, partition) of the decisions among the next `budget` entries of the sweep that `keep`
        refuses. A partition read to its end hands the next call to the next partition."""
        partitions = self.table.active_partitions()
        if not partitions:
            return []
        partition = partitions[self._turn % len(partitions)]
        found: list[tuple[bytes, int]] = []
        for read, (key, raw) in enumerate(self.table.entries(partition, self._resume.get(partition))):
            if read == budget:
                self._resume[partition] = key
                return found
            if not keep(Decision.from_record(orjson.loads(raw))):
                found.append((key, partition))
        self._resume.pop(partition, None)
        self._turn += 1
        return found
