"""Location pings, read in batches by a consumer of their own instead of one faust event each.

A faust event costs more CPU before any work is done than the work of a ping (bench/README.md), and
pings are most of the input. Here they are fetched thousands at a time and each goes to the handler
streams.topology gives (`streams.agents.sessions.process`, as for every other driver record: decode,
checks, the session, the table write, the index, presence, tracking, the dead-letter topic on failure).

Ownership follows faust's: a worker reads the ping partitions whose sessions it owns, from when its
tables are restored after a rebalance (`restored`) until its partitions are revoked (`revoked`).
Offsets are committed in a consumer group of their own (`<app id>.pings`), at faust's commit interval,
and only after the producer has every changelog record, presence change and tracking update of the
records before them: a crash leaves pings to apply again (stale then, and dropped as such), never one
skipped. A partition without a commit in that group starts where the app's own group had it (a worker
upgraded from reading pings through faust), or else at the beginning of its log.

The ping log is also the changelog of position, as a source topic is for a Kafka Streams table built
from it: no table write per ping. Before reading on from its commits, the reader reads back each
partition's last `Settings.position_recovery_s` of pings up to them (`offsets_for_times`) and hands
each driver's last one to the recovery handler, which restores positions without producing anything
again. Until that is done the worker is not `ready`: the index is not rebuilt from sessions without
positions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from infra.clients import committed_offsets
from streams.faust_fixes import still_in_generation
from streams.index import now_ms
from streams.reader import FETCH_WAIT_MS, RETRY_AFTER_S, Batch, PartitionReader
from streams.runtime import Runtime

if TYPE_CHECKING:
    from streams.app import DispatchApp

log = structlog.get_logger(__name__)
# Records applied as one block between two yields to the event loop: HTTP requests, assignment
# requests and timers wait for at most this many pings.
YIELD_EVERY = 200


class PingBatches(PartitionReader):
    """The ping consumer of one worker: started and stopped with its partitions. What it fetches goes
    to `handle`, the ping topics' handler in streams.topology, a block of records at a time."""

    kind = "ping"

    def __init__(self, app: DispatchApp, topics: tuple[str, ...],
                 handle: Callable[[Runtime, list[Any]], Awaitable[None]],
                 recover: Callable[[Runtime, list[Any]], int]) -> None:
        super().__init__(app, topics, max_partition_fetch_bytes=4 * 1024 * 1024)
        self._handle = handle
        self._recover = recover
        self._group = f"{app.conf.id}.pings"
        # The next offset to read of each partition, once everything before it is applied.
        self._positions: dict[TopicPartition, int] = {}

    async def restored(self, partitions: set[int]) -> None:
        """Reads back the positions of the ping partitions `partitions`, then reads them on from
        their committed offsets."""
        await self.revoked()
        assignment = self._assignment
        if not partitions:
            self.ready = True
            return
        consumer = await self._started_consumer(group_id=self._group)
        tps = [TopicPartition(topic, p) for topic in self._topics for p in sorted(partitions)]
        consumer.assign(tps)
        starts = await self._committed(consumer, tps)
        await self._assign(consumer, starts)
        await self._recover_positions(consumer, starts, assignment)
        if assignment != self._assignment:
            return
        self._positions = {}
        self._start(consumer, self._app.runtime.settings.ping_batch_max_records)
        log.info("pings_started", partitions=sorted(partitions), group=self._group,
                 starts={f"{tp.topic}:{tp.partition}": starts.get(tp) for tp in tps})

    async def _recover_positions(self, consumer: AIOKafkaConsumer, starts: dict[TopicPartition, int | None],
                                 assignment: int) -> None:
        """Hands each driver's last ping of the last `position_recovery_s` before each partition's start
        to the recovery handler (the last value per key, as Kafka Streams restores a table from its
        source topic), then leaves every partition at its start."""
        runtime = self._app.runtime
        since_ms = now_ms() - int(runtime.settings.position_recovery_s * 1000)
        found = await consumer.offsets_for_times({tp: since_ms for tp in starts})
        log_ends = await consumer.end_offsets(list(starts))
        # A commit past the log's end (the topic was emptied or created again) is not waited for.
        ends = {tp: min(start, log_ends[tp]) for tp, start in starts.items() if start is not None}
        ends = {tp: end for tp, end in ends.items() if found.get(tp) is not None and found[tp].offset < end}
        if not ends:
            return
        for tp in ends:
            consumer.seek(tp, found[tp].offset)
        started, read = time.monotonic(), 0
        latest: dict[bytes, Any] = {}
        keyless: list[Any] = []
        max_records = runtime.settings.ping_batch_max_records
        while ends and assignment == self._assignment:
            try:
                batch = await consumer.getmany(*ends, timeout_ms=FETCH_WAIT_MS, max_records=max_records)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset >= ends[tp]:
                            break
                        read += 1
                        if record.key is None:
                            keyless.append(record)
                            continue
                        kept = latest.get(record.key)
                        # A driver who changed region has pings in two topics: the later one wins.
                        if kept is None or kept.topic == record.topic or record.timestamp >= kept.timestamp:
                            latest[record.key] = record
                for tp in list(ends):
                    if await consumer.position(tp) >= ends[tp]:
                        consumer.seek(tp, ends.pop(tp))
            except KafkaError as exc:
                log.error("ping_fetch_failed", error=repr(exc), recovering=True)
                runtime.metrics.retries.labels(stage="ping_fetch").inc()
                await asyncio.sleep(RETRY_AFTER_S)
        if assignment != self._assignment:
            return
        handed, passed_over = [*keyless, *latest.values()], 0
        for first in range(0, len(handed), YIELD_EVERY):
            passed_over += self._recover(runtime, handed[first : first + YIELD_EVERY])
            await asyncio.sleep(0)
        recovered = runtime.metrics.positions_recovered
        recovered.labels(outcome="applied").inc(len(handed) - passed_over)
        recovered.labels(outcome="superseded").inc(read - len(handed))
        recovered.labels(outcome="passed_over").inc(passed_over)
        log.info("positions_recovered", pings=read, applied=len(handed) - passed_over, passed_over=passed_over,
                 seconds=round(time.monotonic() - started, 3), since_ms=since_ms)

    async def _committed(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        starts = {tp: await consumer.committed(tp) for tp in tps}
        missing = [tp for tp, offset in starts.items() if offset is None]
        if missing:
            starts.update(await self._app_group_offsets(missing))
        return starts

    async def _app_group_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where the app's own consumer group had these partitions: pings went through faust before."""
        return await committed_offsets(self._app.runtime.settings, self._app.conf.id, tps)

    async def _take(self, batch: Batch) -> None:
        for tp, records in batch.items():
            await self._apply(records)
            self._positions[tp] = records[-1].offset + 1

    async def _apply(self, records: list[Any]) -> None:
        runtime, handle = self._app.runtime, self._handle
        for start in range(0, len(records), YIELD_EVERY):
            await handle(runtime, records[start : start + YIELD_EVERY])
            if runtime.requests.recent():
                await give_way()
            else:
                await asyncio.sleep(0)

    async def _commit(self) -> None:
        """Commits what was applied, once the broker has everything it produced. Not when the app's
        consumer was expelled from the group: another worker owns these partitions now and commits
        in this group too (commits here are not fenced by a generation), so this worker's older
        positions could overwrite its. What this worker applied meanwhile was fenced out anyway."""
        if not self._positions or self._consumer is None:
            return
        positions = dict(self._positions)
        await self._app.producer.flush()
        if not still_in_generation(self._app):
            log.warning("ping_commit_skipped", reason="expelled from the group", partitions=len(positions))
            return
        try:
            await self._consumer.commit(positions)
        except KafkaError as exc:
            # Applied again after a crash or a rebalance before the next commit: dropped as stale.
            log.error("ping_commit_failed", error=repr(exc), partitions=len(positions))
            self._app.runtime.metrics.retries.labels(stage="ping_commit").inc()


# A request's answer takes dozens of turns of the event loop (faust's hand-over, the stream, the Redis
# calls, the sends and their acknowledgements), and a yield of one turn between blocks of pings made
# each of those turns wait for a block: behind a backlog of pings, answers took seconds
# (bench/README.md, the isolation scenario). While requests are about, pings yield until nothing else
# is ready to run, for at most GIVE_WAY_TURNS turns.
GIVE_WAY_TURNS = 64


async def give_way() -> None:
    """Yields to the event loop until no other callback is ready to run (asyncio keeps no public
    count of them: the loop's `_ready` queue), or for GIVE_WAY_TURNS turns."""
    loop = asyncio.get_running_loop()
    for _ in range(GIVE_WAY_TURNS):
        await asyncio.sleep(0)
        if not loop._ready:  # type: ignore[attr-defined]
            return
