"""A table's partitions caught up from their changelog in bulk, before faust's own recovery starts.

faust's recovery hands every changelog record through its fetch loop one at a time (a race of four
tasks per record against a rebalance, an event, a queue, a wait per record), so a worker of a large
fleet with a wiped data directory took most of a minute to answer again (bench/README.md). Read here
with a consumer of its own, thousands of records per fetch, and applied in batches through the
table's own `apply_changelog_batch` (the fence filter included), which also advances the store's
persisted offsets; faust's recovery then starts at those offsets and reads only
what was written since."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from faust.exceptions import ConsistencyError
from faust.types import TP

from infra.clients import new_consumer
from infra.settings import Settings

log = structlog.get_logger(__name__)
PROGRESS_EVERY_S = 5.0
FETCH_RECORDS = 10_000


@dataclass(frozen=True, slots=True)
class ChangelogEntry:
    """A changelog record read outside faust, shaped as faust's apply_changelog_batch reads its events
    (`event.message.key`, ...): the entry is its own message."""

    tp: TP
    offset: int
    key: bytes
    value: bytes | None

    @property
    def partition(self) -> int:
        return self.tp.partition

    @property
    def message(self) -> ChangelogEntry:
        return self


@dataclass(frozen=True)
class Span:
    """The records of one partition still to read: from `first` up to `end` (excluded)."""

    first: int
    end: int

    @property
    def records(self) -> int:
        return self.end - self.first


def spans_to_restore(
    persisted: dict[TP, int | None], log_starts: dict[TP, int], log_ends: dict[TP, int], min_records: int
) -> dict[TP, Span]:
    """The partitions worth reading in bulk: those whose store lacks at least `min_records` records of
    the log (0 turns bulk restores off). A store starts after its persisted offset, or at the log's
    start when it has none (a wiped data directory); retention may have deleted records it lacks."""
    if min_records <= 0:
        return {}
    spans = {}
    for tp, end in log_ends.items():
        offset = persisted.get(tp)
        span = Span(max(log_starts[tp], offset + 1 if offset is not None else 0), end)
        if span.records >= min_records:
            spans[tp] = span
    return spans


class StoreAheadOfChangelog(ConsistencyError):
    """A table store that has applied more of a changelog partition than the log holds: it was built from
    another log. faust would stop on the same condition with its own ConsistencyError, which names
    offsets but not what to do."""


def _check_not_ahead(table: Any, tp: TP, persisted: int | None, end: int) -> None:
    if persisted is None or persisted < end:
        return
    path = table.data.partition_path(tp.partition)
    message = (
        f"the store {path} has applied {tp.topic}[{tp.partition}] up to offset {persisted}, but that log ends "
        f"before offset {end}: the store was built from another log (the changelog topic was deleted and "
        "created again, or the data directory came from another deployment). Stop the worker, delete "
        f"{path.parent} (the worker rebuilds it from the changelog), and start it again; or give it another "
        "GEODISPATCH_DATA_DIR."
    )
    log.error("table_store_ahead_of_changelog", table=table.name, partition=tp.partition, persisted=persisted,
              log_end=end, store=str(path), action=f"delete {path.parent} and restart")
    raise StoreAheadOfChangelog(message)


class BulkRestore:
    """Catches a table's active changelog partitions up before faust's recovery (see the module)."""

    def __init__(self, settings: Settings, on_restored: Callable[[int], None], on_failed: Callable[[], None]) -> None:
        self._settings = settings
        self._on_restored = on_restored
        self._on_failed = on_failed

    async def catch_up(self, table: Any, tps: Iterable[TP], still_current: Callable[[], bool]) -> None:
        """Reads `tps` (changelog partitions of `table`) to their current ends, while `still_current()`
        holds (a new rebalance stops it: what was applied stays, with its persisted offsets). It runs
        inside faust's rebalance, so a failure to read is logged and counted, not raised: faust's
        recovery then reads whatever is left, as it would without this. A store ahead of its log raises
        StoreAheadOfChangelog, which stops the worker as faust's own check would, with what to do."""
        tps = list(tps)
        if not tps:
            return
        try:
            await self._catch_up(table, tps, still_current)
        except (KafkaError, OSError) as exc:
            self._on_failed()
            log.error("changelog_bulk_restore_failed", table=table.name, error=repr(exc),
                      action="faust's recovery reads the rest")

    async def _catch_up(self, table: Any, tps: list[TP], still_current: Callable[[], bool]) -> None:
        """The log's offsets are asked with the reader's own client: faust's consumer answered the same
        questions in up to 3 s while its rebalance was under way, against ~0.1 s for a client of our
        own, started and stopped (a cold start, bench/README.md)."""
        consumer = new_consumer(self._settings, max_partition_fetch_bytes=8 * 2**20, fetch_max_bytes=32 * 2**20)
        await consumer.start()
        try:
            partitions = {tp: TopicPartition(tp.topic, tp.partition) for tp in tps}
            starts = await consumer.beginning_offsets(list(partitions.values()))
            ends = await consumer.end_offsets(list(partitions.values()))
            for tp in tps:
                _check_not_ahead(table, tp, table.data.persisted_offset(tp), ends[partitions[tp]])
            spans = spans_to_restore(
                {tp: table.data.persisted_offset(tp) for tp in tps},
                {tp: starts[p] for tp, p in partitions.items()},
                {tp: ends[p] for tp, p in partitions.items()},
                self._settings.bulk_restore_min_records,
            )
            if not spans or not still_current():
                return
            pending = {partitions[tp]: (tp, span) for tp, span in spans.items()}
            consumer.assign(list(pending))
            for partition, (_, span) in pending.items():
                consumer.seek(partition, span.first)
            # aiokafka 0.14 starts a task on assign(); stopped before that task first runs, stop()
            # raises its CancelledError (into faust's rebalance, were a rebalance to stop us at once).
            await asyncio.sleep(0)
            await self._apply_all(consumer, table, pending, still_current)
        finally:
            await consumer.stop()

    async def _apply_all(self, consumer: Any, table: Any, pending: dict[Any, tuple[TP, Span]],
                         still_current: Callable[[], bool]) -> None:
        total = sum(span.records for _, span in pending.values())
        started = last_report = time.monotonic()
        applied = 0
        log.info("changelog_bulk_restore_started", table=table.name, partitions=len(pending), records=total)
        while pending:
            if not still_current():
                log.warning("changelog_bulk_restore_stopped", table=table.name, applied=applied, records=total,
                            reason="a new rebalance began; faust's recovery reads the rest")
                return
            fetched = await consumer.getmany(*pending, timeout_ms=500, max_records=FETCH_RECORDS)
            entries = [
                ChangelogEntry(pending[partition][0], record.offset, record.key, record.value)
                for partition, records in fetched.items()
                for record in records
                if record.offset < pending[partition][1].end
            ]
            if entries:
                table.apply_changelog_batch(entries)
                applied += len(entries)
                self._on_restored(len(entries))
            for partition in list(pending):
                if await consumer.position(partition) >= pending[partition][1].end:
                    del pending[partition]
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                log.info("changelog_bulk_restore_progress", table=table.name, applied=applied, records=total,
                         seconds=round(now - started, 1))
            await asyncio.sleep(0)  # the web server and the rest of the worker keep answering
        log.info("changelog_bulk_restore_done", table=table.name, applied=applied, records=total,
                 seconds=round(time.monotonic() - started, 2))
