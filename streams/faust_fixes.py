"""Our consumer: faust-streaming's aiokafka consumer with targeted guards around its acking,
gap-filling, committing and seeking, each keeping faust from committing past a record it never
processed, and faust's recovery with the seek that ends a rebalance made before the stream partitions
resume. The app uses the consumer through the `geodispatch` transport (broker URLs
`geodispatch://host:port`, registered as a `faust.transports` entry point) and the recovery through
our `TableManager`. Each fix says when it can be removed; tests/unit/test_faust_fingerprints.py fails
when faust changes a method one overrides."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import structlog
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition
from faust.tables import manager as faust_manager
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from infra.clients import new_consumer

log = structlog.get_logger(__name__)

# faust-streaming's Stream skips a message fetched under an older consumer-group generation, or while
# flow control is paused for a rebalance, and then *acks* it unprocessed ("we want to ack the filtered
# out message, otherwise the lag would increase", faust/streams.py). When the worker keeps or gets back
# that partition, the next commit moves past the skipped record and it is never processed: our zombie
# fault test lost requests exactly this way. Refusing those acks leaves the offset uncommitted, so the
# record is fetched again under the new generation and processed then (at-least-once; every effect of
# ours is idempotent).
# Remove when faust's Stream no longer acks a record it drops unprocessed (faust/streams.py).


# faust-streaming treats a jump in the offsets it reads as a gap to skip (meant for compacted topics
# and transaction markers) and marks the missing offsets acked, so the next commit moves past them.
# Our acked topics are never compacted and our producers are not transactional, so a jump there
# means faust skipped records it had fetched: around a rebalance, a batch fetched under the old
# generation is cut off and the next fetch starts after it (faust issues 216 and 221). Our
# broker-restart fault test lost 17 requests exactly this way. The guard reads the skipped records
# from the log itself and hands them to faust's own message callback, in order, before the record that
# revealed the jump: they are then tracked, processed and acked like any other. (Asking the group to
# rebalance instead, so that it would seek back, did not always bring them back: the long churn and
# zombie runs each lost a request after such a rebalance.) When they cannot all be read (deleted by
# retention while a worker was down, or the broker unreachable), the group is asked to rebalance
# once, and the same gap seen again is filled as faust would, with an error logged, so that records
# really gone cannot make the group rebalance forever.
# Remove when faust stops marking offsets it skipped as acked (faust-streaming issues 216 and 221).
GAP_READ_TIMEOUT_S = 10.0


async def read_skipped(consumer: Consumer, tp: Any, first: int, end: int) -> list[Any]:
    """The records of one partition from `first` up to `end` (excluded), read with a consumer of
    their own (no group) configured like the app's."""
    reader = new_consumer(consumer.app.runtime.settings)
    await reader.start()
    try:
        partition = TopicPartition(tp.topic, tp.partition)
        reader.assign([partition])
        reader.seek(partition, first)
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + GAP_READ_TIMEOUT_S
        while (not records or records[-1].offset < end - 1) and asyncio.get_running_loop().time() < deadline:
            batch = await reader.getmany(partition, timeout_ms=500, max_records=end - first)
            fetched = batch.get(partition, [])
            records.extend(r for r in fetched if r.offset < end)
            if any(r.offset >= end - 1 for r in fetched):
                break
        return records
    finally:
        await reader.stop()


async def process_from_log(consumer: Consumer, tp: Any, first: int, end: int) -> bool:
    """Reads the records `first` to `end` (excluded) of a partition and hands them to faust's message
    callback in order, so they are processed and acked like any other. False when they cannot all be
    read (nothing handed on), or when the group rebalanced meanwhile (the partition may be another
    worker's now, and its owner reads them from the committed offset)."""
    generation = consumer.app.consumer_generation_id
    try:
        records = await read_skipped(consumer, tp, first, end)
    except (KafkaError, OSError) as exc:
        log.error("skipped_records_unreadable", topic=tp.topic, partition=tp.partition, first=first,
                  last=end - 1, error=str(exc))
        return False
    if [r.offset for r in records] != list(range(first, end)):
        return False
    for record in records:
        if consumer.app.consumer_generation_id != generation:
            return False
        await consumer.callback(consumer._to_message(tp, record))
    return True


def still_in_generation(app: Any) -> bool:
    """Whether the app's consumer is still a member of the group generation its partitions were
    assigned in. The coordinator forgets its generation when the group expelled it (a worker paused
    past its session timeout hears so at its next heartbeat), before the revoke that follows."""
    thread = getattr(app.consumer, "_thread", None)
    if thread is None:
        return True
    return thread._ensure_consumer()._coordinator.generation == app.consumer_generation_id


def _request_rejoin(consumer: Consumer) -> None:
    """Asks the group to rebalance; the rebalance seeks every partition to its committed offset."""
    thread = getattr(consumer, "_thread", None)
    if thread is not None:
        coordinator = thread._ensure_consumer()._coordinator
        thread.thread_loop.call_soon_threadsafe(coordinator.request_rejoin)


# faust-streaming commits the first run of consecutive acked offsets of a partition. Its check that the
# run starts where the last commit ended is off by one: it keeps the next offset to read
# (`batch[-1] + 1`) but tests `min(acked) - committed > 1`, and not at all when that offset is 0. So a
# single record skipped unacked (fetched across a generation change: the stream drops it, and the ack
# guard above keeps it unacked) is committed past as soon as the record after it is acked. The zombie
# fault test lost a request exactly this way. Nothing is committed for a partition while the record at
# its committed offset is neither acked nor in a gap. Our agents ack each partition in order, so such a
# hole behind acked records was skipped, not slow: its records are read from the log and processed
# (every effect of ours tolerates a record processed after later ones). Asking the group to rebalance
# instead, which seeks back to the committed offset, did not always bring the record back (a short
# zombie run lost one after such a rebalance), so that is only the fallback when the hole is still
# there after it was read.
# Remove when faust's Consumer._new_offset compares the run of acked offsets with the committed offset
# without the off-by-one, and for offset 0 too.
FILLING, FILLED, REJOINED = "filling", "filled", "rejoined"


def head_missing(committed: int | None, acked: set[int], gaps: Any) -> bool:
    """Whether the record at the committed offset (the next one to commit) is neither acked nor in a
    gap while later records are: committing any of them would pass it."""
    return committed is not None and bool(acked) and committed not in acked and not gaps.at(committed)


def commit_base(committed: int | None, start: tuple[int, int] | None, generation: int) -> int | None:
    """The offset the next commit of a partition must start at: its committed offset, or, before this
    assignment's first commit, where the seek guard below started the partition in this generation
    (`start`, a (generation, offset) pair)."""
    if committed is not None:
        return committed
    if start is not None and start[0] == generation:
        return start[1]
    return None


# aiokafka's `seek_to_committed` leaves a partition that has no committed offset (or offset 0) where it
# is (`if offset and offset > 0`). faust-streaming relies on that seek to bring back what it fetched and
# then dropped around a rebalance (records returned while flow was paused, a batch cut off by the
# generation change): a partition whose first records had not been committed yet resumed after them.
# The full churn fault run lost a trip event exactly this way: trip_events partition 0 had records 0-3
# and no commit when a worker joined; the owner dropped the batch fetched during the rebalance, kept
# its position after it, and its first commit (9) passed offset 3, unseen by the commit guard, which
# knew no committed offset to hold. The seek guard seeks such partitions to the beginning of their log
# (where the app's `earliest` reset policy starts a group without commits) and records, per generation,
# where each partition starts, which the commit guard holds the first commit to. Only the partitions of
# acked topics: faust reads changelog partitions from positions of its own (standbys, recovery), and
# commits nothing for them.
# Remove when aiokafka's seek_to_committed seeks partitions without a commit too, or faust no longer
# relies on that seek to bring back what it dropped around a rebalance.
Offsets = dict[Any, int | None]


async def seek_to_committed_or_beginning(consumer: Any, rewindable: Collection[Any]) -> tuple[Offsets, list[Any]]:
    """aiokafka's `seek_to_committed`, and the partitions of `rewindable` it leaves where they are
    sought to the beginning of their log. Returns where each of those partitions now starts (the
    committed offset, or None, of the others), and which partitions were sought to their beginning."""
    offsets = await consumer.seek_to_committed()
    uncommitted = [tp for tp, offset in offsets.items() if not offset and tp in rewindable]
    try:
        if uncommitted:
            await consumer.seek_to_beginning(*uncommitted)
        for tp in uncommitted:
            offsets[tp] = await consumer.position(tp)
    except IllegalStateError as exc:
        # The group took the partitions back meanwhile; faust seeks again after the rebalance, and the
        # commit guard knows no start for these until then.
        log.info("seek_to_beginning_interrupted", error=str(exc),
                 partitions=[f"{tp.topic}:{tp.partition}" for tp in uncommitted])
        return offsets, []
    return offsets, uncommitted


# Not a fix: topics faust subscribes to, so that the group assigns their partitions with the others
# (and the tables' changelogs with them), but never fetches, because a reader of ours reads them in
# blocks (streams.agents.requests). The app names them (`read_elsewhere`); the consumer leaves them out
# of every fetch and of faust's check that each assigned partition is being read.
async def commit_in_group(app: Any, offsets: dict[TopicPartition, int]) -> bool:
    """Commits offsets of partitions read elsewhere in the app's group, through faust's consumer: the
    commit carries the group generation, so a worker expelled from the group is refused. False when it
    was (or no longer has the partitions)."""
    return await app.consumer._commit({TP(tp.topic, tp.partition): offset for tp, offset in offsets.items()})


class GuardedConsumer(aiokafka_driver.Consumer):
    """faust's aiokafka consumer with the four guards above, each overriding one method and calling
    faust's own through super() whenever faust's behaviour is right. Their state is this consumer's,
    and what concerns partitions it no longer has is dropped at each assignment. It fetches nothing of
    the topics the app reads elsewhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Gaps refused once with a rebalance, by (partition, first offset): seen again, really gone.
        self._refused_gaps: set[tuple[TP, int]] = set()
        # Holes behind acked records, by (partition, committed offset): FILLING, FILLED or REJOINED.
        self._holes: dict[tuple[TP, int], str] = {}
        # Where each acked partition started in a generation: (generation, offset).
        self._starts: dict[TP, tuple[int, int]] = {}
        # The fills under way, held here: the event loop keeps only weak references to its tasks.
        self._fills: set[asyncio.Task] = set()

    # -- topics read elsewhere ---------------------------------------------------------------------

    def _read_here(self, tps: Collection[Any]) -> set[Any]:
        elsewhere = self.app.read_elsewhere
        return {tp for tp in tps if tp.topic not in elsewhere}

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        if active_partitions is None:  # a client-only app: not ours
            return await super()._getmany(active_partitions, timeout)
        partitions = self._read_here(active_partitions)
        if not partitions:  # aiokafka would fetch every assigned partition for none named
            await asyncio.sleep(timeout)
            return {}
        return await super()._getmany(partitions, timeout)

    def verify_event_path(self, now: float, tp: TP) -> None:
        if tp.topic not in self.app.read_elsewhere:
            super().verify_event_path(now, tp)

    # -- the ack guard ------------------------------------------------------------------------------

    def ack(self, message: Any) -> bool:
        app = self.app
        if app.crash_reason is not None:  # stopping: what was cut short goes to the next owner
            return False
        if message.generation_id != app.consumer_generation_id:
            return False
        if not app.flow_control.is_active():
            return False
        return super().ack(message)

    # -- the gap guard ------------------------------------------------------------------------------

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        where = {"topic": tp.topic, "partition": tp.partition, "first": offset_from, "last": offset_to - 1}
        if await process_from_log(self, tp, offset_from, offset_to):
            log.warning("offset_gap_filled", **where, action="read from the log and processed in order")
            return
        if (tp, offset_from) in self._refused_gaps:
            log.error("offset_gap_skipped", **where)
            return await super()._add_gap(tp, offset_from, offset_to)
        self._refused_gaps.add((tp, offset_from))
        log.error("offset_gap_refused", **where, action="rebalance to re-read from the committed offset")
        _request_rejoin(self)

    # -- the commit guard ---------------------------------------------------------------------------

    def _new_offset(self, tp: TP) -> int | None:
        committed = commit_base(self._committed_offset[tp], self._starts.get(tp), self.app.consumer_generation_id)
        acked = self._acked_index[tp]
        if not head_missing(committed, acked, self._gap[tp]):
            return super()._new_offset(tp)
        stage = self._holes.get((tp, committed))
        if stage is None:
            self._holes[(tp, committed)] = FILLING
            log.error("commit_past_unprocessed_refused", topic=tp.topic, partition=tp.partition, offset=committed,
                      first_acked=min(acked), action="read from the log and processed")
            fill = asyncio.get_running_loop().create_task(self._fill(tp, committed, min(acked)))
            self._fills.add(fill)
            fill.add_done_callback(self._fills.discard)
        elif stage == FILLED:  # handed on, and still not acked: dropped again by the stream
            self._holes[(tp, committed)] = REJOINED
            log.error("commit_past_unprocessed_refused", topic=tp.topic, partition=tp.partition, offset=committed,
                      first_acked=min(acked), action="rebalance to re-read from the committed offset")
            _request_rejoin(self)
        return None

    async def _fill(self, tp: TP, first: int, end: int) -> None:
        filled = await process_from_log(self, tp, first, end)
        self._holes[(tp, first)] = FILLED if filled else REJOINED
        if not filled:
            log.error("unprocessed_records_unreadable", topic=tp.topic, partition=tp.partition, offset=first,
                      action="rebalance to re-read from the committed offset")
            _request_rejoin(self)

    # -- the seek guard -----------------------------------------------------------------------------

    async def seek_to_committed(self) -> Offsets:
        generation = self.app.consumer_generation_id
        assignment = self.assignment()
        self._forget_all_but(assignment)
        acked = {tp for tp in assignment if self.app.topics.acks_enabled_for(tp.topic)}
        read = {tp: self._read_offset.get(TP(tp.topic, tp.partition)) for tp in acked}
        thread = self._thread
        offsets, rewound = await thread.call_thread(seek_to_committed_or_beginning, thread._ensure_consumer(),
                                                    acked)
        self._starts.update({TP(tp.topic, tp.partition): (generation, offset) for tp, offset in offsets.items()
                             if tp in acked and offset is not None})
        for tp in rewound:
            # faust's read offset is the last offset it handed on (the next one to read right after a seek):
            # past the start, this worker read records there that are read again, and may have dropped some.
            if read[tp] is not None and read[tp] > offsets[tp]:
                log.info("uncommitted_partition_read_again", topic=tp.topic, partition=tp.partition,
                         first=offsets[tp], read_offset=read[tp])
        return offsets

    def _forget_all_but(self, assignment: Collection[Any]) -> None:
        """Drops the guards' state of partitions this consumer no longer has."""
        kept = {TP(tp.topic, tp.partition) for tp in assignment}
        self._refused_gaps = {key for key in self._refused_gaps if key[0] in kept}
        self._holes = {key: stage for key, stage in self._holes.items() if key[0] in kept}
        self._starts = {tp: start for tp, start in self._starts.items() if tp in kept}


class IdempotentProducer(aiokafka_driver.Producer):
    """faust's producer, idempotent outside transactions too: a send retried after a broker failover
    (a leader lost with the request in flight) is not written twice. faust asks for idempotence only
    for its exactly-once transactions."""

    def _settings_extra(self) -> dict[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class Transport(aiokafka_driver.Transport):
    """faust's aiokafka transport with our consumer and producer: the `geodispatch` entry of
    `faust.transports`."""

    Consumer = GuardedConsumer
    Producer = IdempotentProducer


# faust-streaming's recovery ends a rebalance by resuming the stream partitions, then awaiting the seek
# to their committed offsets, and only then resuming flow control, whose resume clears every stream's
# queue even when flow was already active (it is, after a changelog restore: flow resumes for the
# restore). Records fetched and queued while the seek was awaited, the seek's own records among them,
# were cleared there with the fetch position already past them: a request that was its partition's last
# record then waited for ever, unseen by the commit guard, which sees a hole only behind a later acked
# record (a cold restart of `python -m bench.restarts` answered nothing about once in fifteen). Here the
# seek is made while the stream partitions are still paused, flow control resumes (clearing what was
# queued under the old assignment), and only then do the partitions resume: every record fetched for
# a stream is one the stream keeps.
# Remove when faust's Recovery._resume_streams and on_recovery_completed seek before they resume the
# stream partitions, or its flow control clears only queues it had suspended.
class SeekFirstRecovery(Recovery):
    """faust's recovery with the end of a rebalance reordered: seek, resume flow, resume partitions."""

    async def _resume_streams(self, generation_id: int = 0) -> None:
        await self.app.on_rebalance_complete.send()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume(standbys_ready=True)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        completions = [asyncio.ensure_future(table.on_recovery_completed(self.actives_for_table[table],
                                                                         self.standbys_for_table[table]))
                       for table in self.tables.values()]
        if completions:
            await asyncio.wait(completions)
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume(standbys_ready=not self.app.assignor.assigned_standbys())

    async def _seek_then_resume(self, standbys_ready: bool) -> None:
        app = self.app
        consumer = app.consumer
        assignment = consumer.assignment()
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if standbys_ready:
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")


class TableManager(faust_manager.TableManager):
    """faust's table manager with our recovery (the app's `TableManager` setting)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

