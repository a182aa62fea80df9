"""This worker's writes to the shared index: session changes in batches, and the rebuild of its part
of the index from its table after a rebalance or when Redis lost it. The writer alone holds what the
rebuild was last done for and which partitions wait for it."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Protocol

import redis.asyncio as aioredis
import structlog

from infra.settings import Settings
from streams.index import RegionIndex, WriteResult
from streams.logic.sessions import DriverSession
from streams.metrics import Metrics
from streams.routing import key_partition
from streams.runtime import PartitionService

log = structlog.get_logger(__name__)
# Sessions per write of a rebuild: each is one pipelined round trip.
REBUILD_CHUNK = 2000
# Drivers per flush, the rest left for the next: a backlog drained at full speed stages the whole
# fleet between two flushes, and one round trip for all of it held its encoded arguments at once
# (hundreds of MiB of RSS that the allocator kept afterwards).
FLUSH_MAX = 5000


class PartitionOwner(Protocol):
    """What a rebuild needs to know of the worker it runs in (streams.app.DispatchApp)."""

    def settled(self) -> bool:
        """Partitions assigned, tables restored and positions read back, no rebalance under way."""

    def rebalances(self) -> int:
        """How many rebalances this worker has begun: one that begins during a rebuild changes it."""

    def fence_token(self) -> int: ...

    def driver_partitions(self) -> set[int]: ...

    async def driver_command_ends(self, partitions: Iterable[int]) -> dict[int, int]: ...

    def driver_commands_applied(self, partition: int) -> int:
        """The next driver-command offset of the partition still to apply."""

    def load_sessions(self) -> list[DriverSession]:
        """Every session of this worker's partitions, from its table."""


class IndexWriter(PartitionService):
    """Collects session changes and writes them to the index in batches. Only the newest version of
    each driver is kept while waiting, with whether anything but its position changed since its last
    write (most pings change position alone: the index then rewrites only that). The index is derived
    state, rebuilt from the table when Redis is emptied, so a batch that keeps failing waits and is
    tried again."""

    def __init__(self, index: RegionIndex, metrics: Metrics, settings: Settings) -> None:
        self._index = index
        self._metrics = metrics
        self._settings = settings
        self._pending: dict[str, DriverSession] = {}
        # Of the drivers pending, those with a change besides their position: written whole.
        self._whole: set[str] = set()
        self.failures = 0
        # What this worker last rebuilt the index for: the index's epoch and the rebalance count.
        self.epoch: str | None = None
        self._rebalance = -1
        # While partitions are not ready: which, and the driver-command offsets to apply first.
        self._unready: set[int] = set()
        self._catch_up: dict[int, int] | None = None

    def stage(self, session: DriverSession, moved_only: bool = False) -> None:
        """`moved_only`: the change is of position alone (a ping), and so is every change staged for
        this driver since its last write."""
        self._pending[session.driver_id] = session
        if not moved_only:
            self._whole.add(session.driver_id)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def revoked(self) -> None:
        """Drops what waits: after a rebalance some of it may be another worker's now, and flushed
        with this worker's new token it would fence the new owner out. The rebuild that follows every
        rebalance rewrites this worker's sessions from its table."""
        self._pending.clear()
        self._whole.clear()

    async def flush(self, fence: int) -> WriteResult:
        if not self._pending:
            return WriteResult()
        if len(self._pending) <= FLUSH_MAX:
            batch, whole = self._pending, self._whole
            self._pending, self._whole = {}, set()
        else:
            batch = {d: self._pending.pop(d) for d in list(itertools.islice(self._pending, FLUSH_MAX))}
            whole = self._whole & batch.keys()
            self._whole -= whole
        if self._unready:
            # Redis would refuse them anyway: keep them back without a round trip each.
            partitions = self._settings.partitions
            kept = [d for d in batch if key_partition(d.encode(), partitions) in self._unready]
            self._put_back({d: batch.pop(d) for d in kept}, whole)
            if not batch:
                return WriteResult()
        started = time.perf_counter()
        try:
            result = await self._index.write_sessions([s for d, s in batch.items() if d in whole], fence,
                                                      moves=[s for d, s in batch.items() if d not in whole])
        except (aioredis.RedisError, OSError):
            self._put_back(batch, whole)
            self.failures += 1
            raise
        self.failures = 0
        self._put_back({d: batch[d] for d in result.held}, whole)
        self._put_back({d: batch[d] for d in result.unmovable}, set(result.unmovable))
        self._metrics.index_write_seconds.observe(time.perf_counter() - started)
        if result.fenced:
            self._metrics.fenced_writes.labels(store="index").inc(result.fenced)
        return result

    def _put_back(self, changes: dict[str, DriverSession], whole: set[str]) -> None:
        """Pending again, under anything newer staged meanwhile, and whole if either was."""
        for driver_id, change in changes.items():
            self._pending.setdefault(driver_id, change)
            if driver_id in whole:
                self._whole.add(driver_id)

    async def sync(self, worker: PartitionOwner) -> None:
        """Rebuilds from the table when this worker's partitions changed or the index's epoch did
        (Redis emptied or replaced, or `geodispatch index rebuild`). A partition that is not ready
        (Redis was emptied) is rebuilt and marked ready only once this worker has applied every driver
        command sent to it before the loss was noticed: a lost reservation comes back from the
        session's trip, and the session hears of the trip through such a command."""
        if not worker.settled():
            return
        # What this rebuild is for. A rebalance can begin while it waits for Redis (faust starts one
        # from its consumer thread): it then must neither load sessions from a table not yet
        # restored, nor count as the rebuild of that rebalance (a zombie fault run lost a trip to
        # exactly that).
        rebalance, token = worker.rebalances(), worker.fence_token()
        index = self._index
        epoch = await index.current_epoch()
        unready = await index.unready(worker.driver_partitions())
        self._unready = set(unready)
        if not unready and epoch == self.epoch and rebalance == self._rebalance:
            return
        if unready and not await self._commands_applied(worker, unready):
            return
        if not worker.settled() or worker.rebalances() != rebalance:
            return
        sessions = worker.load_sessions()
        for start in range(0, len(sessions), REBUILD_CHUNK):
            await index.write_sessions(sessions[start : start + REBUILD_CHUNK], token, rebuild=True)
        await index.mark_ready(unready, epoch)
        self._unready, self._catch_up = set(), None
        self.epoch, self._rebalance = epoch, rebalance
        log.info("index_rebuilt", drivers=len(sessions), epoch=epoch, rebalance=rebalance, readied=unready)

    async def _commands_applied(self, worker: PartitionOwner, partitions: list[int]) -> bool:
        """Whether this worker has applied the driver commands of these partitions up to their end
        offsets as measured when it first found them not ready."""
        if self._catch_up is None or set(self._catch_up) != set(partitions):
            self._catch_up = await worker.driver_command_ends(partitions)
            log.info("index_partitions_not_ready", partitions=partitions, apply_commands_up_to=self._catch_up)
        return all(worker.driver_commands_applied(p) >= end for p, end in self._catch_up.items())
