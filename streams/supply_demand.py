"""This worker's share of the supply/demand feed (`dispatch.supply_demand`, compacted): available drivers
per H3 cell of its driver partitions, answered requests per cell of its request partitions over a
sliding window, written at most once a second per share and only when a share changed.

Supply is counted as sessions change (streams.tables.SessionStore tells `SupplyCounts` of every
change), never by scanning them; it is complete once the worker has loaded every session of its
partitions (the index rebuild after each rebalance does). Demand is counted as answers are taken by
the broker (streams.agents.assignment). After every rebalance the worker takes its partitions over:
it counts demand again from the topics (the requests and answers of the window, read back in the
background; answers given from then on are counted as they come), reads the feed, writes a tombstone
for each share of its partitions it does not count (an earlier owner's, or its own before a restart)
and writes every share it counts. Between a revocation and that takeover it writes nothing."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from consumers.supply_demand import read_feed, restaurant_cell
from infra.clients import new_consumer
from infra.settings import Settings
from schemas.codec import InvalidMessage
from schemas.models import (
    DEMAND,
    SUPPLY,
    AssignmentRequested,
    AssignmentResponse,
    SupplyDemand,
    demand_outcome,
    parse_feed_key,
)
from streams.index import now_ms
from streams.logic.supply_demand import (
    DemandWindow,
    FeedRecord,
    SupplyCounts,
    demand_records,
    orphaned,
    supply_records,
)
from streams.runtime import PartitionService

if TYPE_CHECKING:
    from streams.app import DispatchApp

log = structlog.get_logger(__name__)
# How often the feed is written: a share changes at most this often on the topic.
EMIT_EVERY_S = 1.0
# A takeover that failed (the broker unreachable) is tried again after this long.
RETRY_AFTER_S = 2.0


class SupplyDemandFeed(PartitionService):
    """The feed's writer in one worker: `supply` with the sessions role, `demand` with the assignments
    role (None without)."""

    def __init__(self, app: DispatchApp, settings: Settings, supply: SupplyCounts | None,
                 demand: DemandWindow | None) -> None:
        self._app = app
        self.supply = supply
        self.demand = demand
        self._resolution = settings.supply_demand_resolution
        self._window_s = settings.supply_demand_window_s
        # The partitions whose shares this worker writes, by kind; None between a revocation and the
        # takeover that follows the next assignment.
        self._owned: dict[str, set[int] | None] = {SUPPLY: None, DEMAND: None}
        # Answers are counted for these request partitions (from the start of a takeover on).
        self._counting: set[int] = set()
        self._tombstones: dict[str, list[FeedRecord]] = {SUPPLY: [], DEMAND: []}
        self._takeover: asyncio.Task[None] | None = None
        # By kind: write every share at the next tick (after a takeover, or a write that failed).
        self._rewrite: dict[str, bool] = {SUPPLY: False, DEMAND: False}

    # -- what the handlers tell it ---------------------------------------------------------------

    def answered(self, message: Any, status: str, error: str | None) -> None:
        """An answer the broker has taken, for the request `message`: counted at its restaurant's cell."""
        if self.demand is None or message.partition not in self._counting:
            return
        runtime = self._app.runtime
        try:
            cell = restaurant_cell(runtime.codec.decode_raw(AssignmentRequested, message.value), self._resolution)
        except InvalidMessage:  # answered "Invalid coordinates" or the like: it has no cell
            return
        if cell is not None:
            self.demand.add(now_ms(), (cell, message.partition), demand_outcome(status, error))

    # -- the partitions' lifecycle --------------------------------------------------------------

    async def restored(self, partitions: set[int]) -> None:
        await self.revoked()
        since = now_ms()
        requests = self._app.request_partitions() if self.demand is not None else set()
        if self.demand is not None:
            self.demand.clear()
            self._counting = set(requests)
        self._takeover = asyncio.create_task(self._take_over(partitions, requests, since),
                                             name="supply_demand_takeover")

    async def revoked(self) -> None:
        """Nothing more is written for the partitions until they are taken over again."""
        if self._takeover is not None:
            self._takeover.cancel()
            await asyncio.gather(self._takeover, return_exceptions=True)
            self._takeover = None
        self._owned = {SUPPLY: None, DEMAND: None}
        self._tombstones = {SUPPLY: [], DEMAND: []}
        self._counting = set()

    async def _take_over(self, drivers: set[int], requests: set[int], since_ms: int) -> None:
        settings, metrics = self._app.runtime.settings, self._app.runtime.metrics
        while True:
            try:
                answers = []
                if self.demand is not None and requests:
                    answers = await read_back_answers(self._app, requests, since_ms - self._window_s * 1000, since_ms)
                feed = await read_feed(settings, self._app.runtime.codec)
                break
            except Exception as exc:  # the broker unreachable, or a topic missing: logged, counted, tried again
                log.error("supply_demand_takeover_failed", error=repr(exc), retry_in_s=RETRY_AFTER_S,
                          exc_info=not isinstance(exc, KafkaError | OSError))
                metrics.supply_demand_failures.labels(stage="takeover").inc()
                await asyncio.sleep(RETRY_AFTER_S)
        if self.demand is not None:
            self.demand.merge(answers)
        existing = [parse_feed_key(key) for key in feed.latest]
        for kind, partitions in ((SUPPLY, drivers if self.supply is not None else None),
                                 (DEMAND, requests if self.demand is not None else None)):
            if partitions is None:
                continue
            self._tombstones[kind] = orphaned(existing, kind, partitions, ())
            self._owned[kind] = set(partitions)
            self._rewrite[kind] = True
        log.info("supply_demand_taken_over", driver_partitions=sorted(drivers), request_partitions=sorted(requests),
                 shares_found=len(existing), answers_read_back=self.demand.answers if self.demand else 0)

    # -- writing --------------------------------------------------------------------------------

    async def emit_supply(self) -> None:
        """Writes the supply shares changed since the last call (every one after a takeover or a failed
        write), a tombstone for each at zero. Not before the counts are complete."""
        supply, owned = self.supply, self._owned[SUPPLY]
        if supply is None or owned is None or not supply.complete:
            return
        rewrite, self._rewrite[SUPPLY] = self._rewrite[SUPPLY], False
        changes = supply.take_changes()
        if rewrite:
            changes = {**supply.counts, **changes}
        await self._write(SUPPLY, self._orphans(SUPPLY, owned, supply.counts) + supply_records(changes))

    async def emit_demand(self) -> None:
        """The demand shares, as `emit_supply` does, after the answers older than the window are out."""
        demand, owned = self.demand, self._owned[DEMAND]
        if demand is None or owned is None:
            return
        demand.expire(now_ms())
        rewrite, self._rewrite[DEMAND] = self._rewrite[DEMAND], False
        changes = demand.take_changes()
        if rewrite:
            changes = {**{share: counts.as_tuple() for share, counts in demand.counts.items()}, **changes}
        await self._write(DEMAND, self._orphans(DEMAND, owned, demand.counts) + demand_records(changes))

    def _orphans(self, kind: str, owned: set[int], counted: Any) -> list[FeedRecord]:
        tombstones, self._tombstones[kind] = self._tombstones[kind], []
        return orphaned(((r.cell, r.kind, r.partition) for r in tombstones), kind, owned, counted)

    async def _write(self, kind: str, records: list[FeedRecord]) -> None:
        runtime = self._app.runtime
        topic, codec, metrics = runtime.names.supply_demand, runtime.codec, runtime.metrics
        ts = datetime.now(UTC)
        for record in records:
            value = None
            if record.counts is not None:
                value = codec.encode(SupplyDemand(h3=record.cell, resolution=self._resolution, kind=kind,
                                                  partition=record.partition, window_s=self._window_s, ts=ts,
                                                  **record.counts))
            try:
                acknowledgement = await self._app.producer.send(topic, record.key.encode(), value, None, None, None)
            except KafkaError as exc:
                self._failed(kind, repr(exc))
                return
            acknowledgement.add_done_callback(functools.partial(self._written, kind))
            metrics.child(metrics.supply_demand_records, kind, "share" if value is not None else "tombstone").inc()

    def _written(self, kind: str, acknowledgement: Any) -> None:
        if acknowledgement.cancelled() or acknowledgement.exception() is not None:
            self._failed(kind, "cancelled" if acknowledgement.cancelled() else repr(acknowledgement.exception()))

    def _failed(self, kind: str, error: str) -> None:
        # Every share of the kind is written again at the next tick. A lost tombstone is not: the next
        # takeover finds its share and writes it again.
        self._rewrite[kind] = True
        self._app.runtime.metrics.supply_demand_failures.labels(stage="write").inc()
        log.error("supply_demand_write_failed", kind=kind, error=error)


async def read_back_answers(app: DispatchApp, partitions: set[int], since_ms: int, until_ms: int
                            ) -> list[tuple[int, tuple[str, int], str]]:
    """The answers of `partitions` given from `since_ms` to before `until_ms` (the responses' timestamps),
    each at its request's restaurant: (timestamp ms, (cell, partition), outcome), oldest first. Requests
    are read from a window earlier, so that a request answered late is found."""
    runtime = app.runtime
    settings, names, codec = runtime.settings, runtime.names, runtime.codec
    window_ms = settings.supply_demand_window_s * 1000
    cells: dict[str, str | None] = {}
    for region in settings.regions:
        for record in await read_span(app, names.requests(region), partitions, since_ms - window_ms, until_ms):
            try:
                raw = codec.decode_raw(AssignmentRequested, record.value)
            except InvalidMessage:
                continue
            if isinstance(raw.get("orderId"), str):
                cells[raw["orderId"]] = restaurant_cell(raw, settings.supply_demand_resolution)
    answers = []
    for record in await read_span(app, names.responses, partitions, since_ms, until_ms):
        try:
            answer = codec.decode(AssignmentResponse, record.value)
        except InvalidMessage:
            continue
        cell = cells.get(answer.orderId)
        if cell is not None:
            answers.append((record.timestamp, (cell, record.partition), demand_outcome(answer.status, answer.error)))
    answers.sort(key=lambda answer: answer[0])
    return answers


async def read_span(app: DispatchApp, topic: str, partitions: set[int], since_ms: int, until_ms: int) -> list[Any]:
    """The records of `partitions` of `topic` timestamped from `since_ms` to before `until_ms`, read up to
    the partitions' ends as of the call."""
    consumer = new_consumer(app.runtime.settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        ends = await consumer.end_offsets(tps)
        remaining = {}
        for tp in tps:
            if found.get(tp) is not None and found[tp].offset < ends[tp]:
                consumer.seek(tp, found[tp].offset)
                remaining[tp] = ends[tp]
        records = []
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
            for tp, got in batch.items():
                records += [r for r in got if r.offset < remaining[tp] and since_ms <= r.timestamp < until_ms]
            for tp in list(remaining):
                if await consumer.position(tp) >= remaining[tp]:
                    del remaining[tp]
            await asyncio.sleep(0)
        return records
    finally:
        await consumer.stop()

