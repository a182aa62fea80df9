"""Targeted guards around faust-streaming's acking, gap-filling and committing, installed once by
streams.app: each keeps faust from committing past a record it never processed."""

from __future__ import annotations

import functools
from typing import Any

from faust.transport.consumer import Consumer

# faust-streaming's Stream skips a message fetched under an older consumer-group generation, or while
# flow control is paused for a rebalance, and then *acks* it unprocessed ("we want to ack the filtered
# out message, otherwise the lag would increase", faust/streams.py). When the worker keeps or gets back
# that partition, the next commit moves past the skipped record and it is never processed: our zombie
# fault test lost requests exactly this way. Refusing those acks leaves the offset uncommitted, so the
# record is fetched again under the new generation and processed then (at-least-once; every effect of
# ours is idempotent).
_INSTALLED_FLAG = "_geodispatch_ack_guard"


def install_ack_guard() -> None:
    if getattr(Consumer.ack, _INSTALLED_FLAG, False):
        return
    original = Consumer.ack

    def ack(self: Consumer, message: Any) -> bool:
        app = self.app
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            return False
        return original(self, message)

    setattr(ack, _INSTALLED_FLAG, True)
    Consumer.ack = ack


# faust-streaming treats a jump in the offsets it reads as a gap to skip (meant for compacted topics
# and transaction markers) and marks the missing offsets acked, so the next commit moves past them.
# Our acked topics are never compacted and our producers are not transactional, so a jump there
# means faust skipped records it had fetched: around a rebalance after the broker came back, a
# batch fetched under the old generation is cut off and the next fetch starts after it (faust
# issues 216 and 221). Our broker-restart fault test lost 17 requests exactly this way. Instead of
# acking the gap we ask the group to rebalance once: the commit stays before the gap, and the
# rebalance seeks every partition back to its committed offset, so the skipped records are read
# again (and those after them processed twice, which our idempotent effects allow). A gap seen
# twice is filled as faust would, with an error logged, so that records really gone (deleted by
# retention while a worker was down) cannot make the group rebalance forever.
_GAP_FLAG = "_geodispatch_gap_guard"


def install_gap_guard() -> None:
    if getattr(Consumer._add_gap, _GAP_FLAG, False):
        return
    import structlog

    log = structlog.get_logger(__name__)
    original = Consumer._add_gap
    refused: set[tuple[Any, int]] = set()

    async def _add_gap(self: Consumer, tp: Any, offset_from: int, offset_to: int) -> None:
        if (tp, offset_from) in refused:
            log.error("offset_gap_skipped", topic=tp.topic, partition=tp.partition, first=offset_from,
                      last=offset_to - 1)
            return await original(self, tp, offset_from, offset_to)
        refused.add((tp, offset_from))
        log.error("offset_gap_refused", topic=tp.topic, partition=tp.partition, first=offset_from,
                  last=offset_to - 1, action="rebalance to re-read from the committed offset")
        _request_rejoin(self)

    setattr(_add_gap, _GAP_FLAG, True)
    Consumer._add_gap = _add_gap


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
# hole behind acked records was skipped, not slow: the group is asked to rebalance, once per hole,
# which seeks back to the committed offset and reads the record again.
_COMMIT_FLAG = "_geodispatch_commit_guard"


def head_missing(committed: int | None, acked: set[int], gaps: Any) -> bool:
    """Whether the record at the committed offset (the next one to commit) is neither acked nor in a
    gap while later records are: committing any of them would pass it."""
    return committed is not None and bool(acked) and committed not in acked and not gaps.at(committed)


def install_commit_guard() -> None:
    if getattr(Consumer._new_offset, _COMMIT_FLAG, False):
        return
    import structlog

    log = structlog.get_logger(__name__)
    original = Consumer._new_offset
    asked: set[tuple[Any, int]] = set()

    @functools.wraps(original)
    def _new_offset(self: Consumer, tp: Any) -> int | None:
        committed = self._committed_offset[tp]
        if not head_missing(committed, self._acked_index[tp], self._gap[tp]):
            return original(self, tp)
        if (tp, committed) not in asked:
            asked.add((tp, committed))
            log.error("commit_past_unprocessed_refused", topic=tp.topic, partition=tp.partition, offset=committed,
                      first_acked=min(self._acked_index[tp]), action="rebalance to re-read from the committed offset")
            _request_rejoin(self)
        return None

    setattr(_new_offset, _COMMIT_FLAG, True)
    Consumer._new_offset = _new_offset
