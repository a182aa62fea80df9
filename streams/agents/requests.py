"""Assignment requests, read in blocks by a consumer of their own instead of one faust event each.

A faust event costs more CPU before any work is done than deciding a request in a block
(bench/README.md), and a block is decided together (streams.agents.assignment). Ownership is faust's:
the app's consumer group assigns the request partitions (faust subscribes to the request topics and
never fetches them: streams.faust_fixes), and this reader reads the ones this worker got, from when
its tables are restored until they are revoked.

Offsets are committed in the app's own group, through faust's consumer, so a commit carries the
group generation: a worker expelled from the group cannot commit over its successor. A request's
offset is committed only once its answer (and its driver's trip) are acknowledged, and those of
earlier requests too: a crash leaves requests to answer again (identically, from the decisions
table), never one unanswered. The next blocks are read and decided while earlier answers wait for
the broker, up to `Settings.answers_in_flight` requests."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.clients import committed_offsets
from streams.agents.assignment import Completion
from streams.faust_fixes import commit_in_group, still_in_generation
from streams.reader import Batch, PartitionReader
from streams.runtime import Runtime

if TYPE_CHECKING:
    from streams.app import DispatchApp

log = structlog.get_logger(__name__)
# Under load, a block is fetched at most this often. Each block costs its Redis calls and sends its
# answers in produce requests of their own, whatever its size: blocks fetched back to back stay small
# and cost more CPU per request than blocks that wait this long (bench/README.md has the figures). A
# request arriving when no block was fetched for that long is decided at once.
DECIDE_EVERY_S = 0.002
# Blocks whose answers may wait for the broker at once: the next blocks are decided meanwhile, so each
# block is at most this share of `Settings.answers_in_flight`.
BLOCKS_IN_FLIGHT = 4
# With batch matching, the rest of a window is read this many requests per fetch until none is left,
# up to WINDOW_LIMIT requests: a window is decided whole, and a backlog in windows of a bounded cost.
WINDOW_FETCH = 500
WINDOW_LIMIT = 2000


class RequestBatches(PartitionReader):
    """The request consumer of one worker: started and stopped with its partitions. What it fetches
    goes to `handle` (streams.agents.assignment.decide_requests), which returns the wait for the
    answers' acknowledgements."""

    kind = "request"

    def __init__(self, app: DispatchApp, topics: tuple[str, ...],
                 handle: Callable[[Runtime, list[Any]], Awaitable[Completion]]) -> None:
        super().__init__(app, topics, max_partition_fetch_bytes=1024 * 1024)
        self._handle = handle
        # Blocks whose answers the broker has not all taken yet, oldest first: the offsets they end
        # at, how many requests they hold, and their wait.
        self._in_flight: deque[tuple[dict[TopicPartition, int], int, asyncio.Future]] = deque()
        # The next offset of each partition whose answers before it are all taken: what to commit.
        self._answered: dict[TopicPartition, int] = {}
        self._fetched_at = float("-inf")

    async def restored(self, partitions: set[int]) -> None:
        """Reads the request partitions faust assigned this worker (`partitions`, the driver topics'
        partitions, do not say which: a process of the assignments role alone has none) from the
        group's committed offsets."""
        await self.revoked()
        assignment = self._assignment
        tps = [TopicPartition(tp.topic, tp.partition) for tp in self._app.consumer.assignment()
               if tp.topic in self._topics]
        if not tps:
            self.ready = True
            return
        committed = await committed_offsets(self._app.runtime.settings, self._app.conf.id, tps)
        if assignment != self._assignment:
            return
        consumer = await self._started_consumer()
        starts = {tp: committed.get(tp) for tp in tps}
        await self._assign(consumer, starts)
        self._answered = {}
        self._start(consumer, max(1, self._app.runtime.settings.answers_in_flight // BLOCKS_IN_FLIGHT))
        log.info("requests_started", partitions=len(tps),
                 starts={f"{tp.topic}:{tp.partition}": start for tp, start in starts.items()})

    async def _fetch(self, consumer: AIOKafkaConsumer, max_records: int) -> Batch:
        loop = asyncio.get_running_loop()
        wait = self._fetched_at + DECIDE_EVERY_S - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        batch = await super()._fetch(consumer, max_records)
        if batch:
            self._fetched_at = loop.time()
            settings = self._app.runtime.settings
            if settings.matching == "batch":
                await self._rest_of_window(consumer, batch, settings.match_window_ms / 1000)
        return batch

    async def _rest_of_window(self, consumer: AIOKafkaConsumer, batch: Batch, window_s: float) -> None:
        """Adds to `batch` the requests of its window: those sent (by their record timestamps) until
        `window_s` after its first. A backlog's window has passed already and is read at once; a
        sender's clock ahead of ours delays a window by `window_s` at most."""
        first_ms = min(records[0].timestamp for records in batch.values())
        await asyncio.sleep(min(window_s, max(0.0, first_ms / 1000 + window_s - time.time())))
        count = sum(len(records) for records in batch.values())
        while count < WINDOW_LIMIT and (more := await consumer.getmany(timeout_ms=0, max_records=WINDOW_FETCH)):
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                count += len(records)

    async def _take(self, batch: Batch) -> None:
        runtime = self._app.runtime
        if batch and not still_in_generation(self._app):
            # Expelled from the group (paused past its session timeout): these partitions are another
            # worker's now, and a consumer of no group would read on. The block is left to their owner,
            # who reads it from the committed offsets (or to this worker, if the rebalance gives them
            # back: `restored` reads from the committed offsets again, and ends the pause).
            consumer = self._consumer
            if consumer is not None:
                consumer.pause(*consumer.assignment())
            log.warning("request_reading_paused", reason="expelled from the group",
                        left=sum(len(records) for records in batch.values()))
            return
        if batch:
            runtime.requests.read()
            records = [record for records in batch.values() for record in records]
            completion = await self._handle(runtime, records)
            ends = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            self._in_flight.append((ends, len(records), asyncio.ensure_future(completion())))
        limit = runtime.settings.answers_in_flight
        while self._in_flight and (self._in_flight[0][2].done()
                                   or sum(count for _, count, _ in self._in_flight) > limit):
            await self._settle_oldest()

    async def _settle_oldest(self) -> None:
        ends, _, taken = self._in_flight.popleft()
        await taken  # raises what broke it: the loop stops, the app with it, and nothing is committed
        self._answered.update(ends)

    async def _finish(self) -> None:
        while self._in_flight:
            await self._settle_oldest()

    async def _commit(self) -> None:
        """Commits the requests answered, once the broker has the decisions' changelog records too."""
        if not self._answered:
            return
        answered, self._answered = self._answered, {}
        await self._app.producer.flush()
        if not await commit_in_group(self._app, answered):
            # Not this worker's any more (the group rebalanced): the new owner answers them again.
            log.warning("request_commit_refused", partitions=len(answered))
