"""A targeted guard around faust-streaming's acking, installed once by streams.app.

faust-streaming's Stream skips a message fetched under an older consumer-group generation, or while
flow control is paused for a rebalance, and then *acks* it unprocessed ("we want to ack the
filtered out message, otherwise the lag would increase", faust/streams.py). When the worker keeps
or gets back that partition, the next commit moves past the skipped record and it is never
processed: our zombie fault test lost requests exactly this way. Refusing those acks leaves the
offset uncommitted, so the record is fetched again under the new generation and processed then
(at-least-once; every effect of ours is idempotent)."""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer

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
        thread = getattr(self, "_thread", None)
        log.error("offset_gap_refused", topic=tp.topic, partition=tp.partition, first=offset_from,
                  last=offset_to - 1, action="rebalance to re-read from the committed offset")
        if thread is not None:
            coordinator = thread._ensure_consumer()._coordinator
            thread.thread_loop.call_soon_threadsafe(coordinator.request_rejoin)

    setattr(_add_gap, _GAP_FLAG, True)
    Consumer._add_gap = _add_gap
