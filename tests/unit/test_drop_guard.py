"""The drop guard: records faust handed on past the committed offset and then dropped, with no later
record acked to reveal the hole (the cold restart that never answered), are read from the log and
processed after two checks that find them neither acked nor in flight."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.types import TP
from intervaltree import IntervalTree

from streams import faust_fixes
from streams.faust_fixes import dropped_span
from tests.unit.guarded import guarded

GENERATION = 3
TP_REQUESTS = TP("t.requests", 1)


def test_records_handed_on_past_the_commit_and_nowhere_since_are_a_dropped_span():
    assert dropped_span(2, 2, -1, IntervalTree(), set()) == (2, 3)
    assert dropped_span(2, 5, 1, IntervalTree(), set()) == (2, 6)  # acked before the commit at 2


def test_records_still_on_their_way_or_behind_the_commit_are_not():
    assert dropped_span(2, 2, -1, IntervalTree(), {2}) is None  # queued for the stream, or not acked yet
    assert dropped_span(2, 4, 4, IntervalTree(), set()) is None  # a hole behind an ack: the commit guard's
    assert dropped_span(2, 2, 2, IntervalTree(), set()) is None  # acked, its commit under way
    assert dropped_span(3, 2, -1, IntervalTree(), set()) is None  # nothing handed on since the commit
    assert dropped_span(None, 2, -1, IntervalTree(), set()) is None  # no commit and no known start
    gaps = IntervalTree()
    gaps.addi(2, 3)
    assert dropped_span(2, 2, -1, gaps, set()) is None  # a gap faust accepted


def _consumer(queued: tuple[int, ...] = ()) -> SimpleNamespace:
    delivered: list[int] = []

    async def faust_callback(message) -> None:
        delivered.append(message.offset)

    coordinator = SimpleNamespace(generation=GENERATION, request_rejoin=lambda: None)
    thread = SimpleNamespace(thread_loop=SimpleNamespace(call_soon_threadsafe=lambda callback: None),
                             _ensure_consumer=lambda: SimpleNamespace(_coordinator=coordinator))
    channel = SimpleNamespace(_queue=SimpleNamespace(
        _queue=[SimpleNamespace(message=SimpleNamespace(tp=TP_REQUESTS, offset=o)) for o in queued]))
    app = SimpleNamespace(consumer_generation_id=GENERATION, flow_control=SimpleNamespace(is_active=lambda: True),
                          topics=_Topics([channel]), runtime=None)
    consumer = guarded(
        _thread=thread, app=app, flow_active=True, _unacked_messages=set(), _faust_callback=faust_callback,
        _to_message=lambda tp, record: SimpleNamespace(tp=tp, offset=record.offset, generation_id=GENERATION),
        _committed_offset=defaultdict(lambda: None, {TP_REQUESTS: 2}), _acked_index=defaultdict(set),
        _gap=defaultdict(IntervalTree), delivered=delivered,
    )
    consumer.callback = consumer._hand_on
    app.consumer = consumer
    return consumer


class _Topics(list):
    def acks_enabled_for(self, topic: str) -> bool:
        return topic == TP_REQUESTS.topic


def _log_holding(offsets):
    async def read(consumer, tp, first, end):
        return [SimpleNamespace(offset=o) for o in offsets if first <= o < end]

    return read


async def _checks(consumer, times: int) -> None:
    """The guard's timer firing `times` times, then whatever it started given time to hand on."""
    for _ in range(times):
        consumer.find_dropped()
    await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _log(monkeypatch):
    """The log as the guard reads it back: offsets 0-9."""
    monkeypatch.setattr(faust_fixes, "read_skipped", _log_holding(range(0, 10)))


async def _hand_on_and_drop(consumer, offset: int) -> None:
    """faust hands a record on; the stream then skips it (nothing tracks it any more)."""
    await consumer._hand_on(SimpleNamespace(tp=TP_REQUESTS, offset=offset, generation_id=GENERATION))
    consumer.delivered.clear()


async def test_a_dropped_last_record_is_read_from_the_log_and_handed_on_after_a_second_check():
    consumer = _consumer()
    await _hand_on_and_drop(consumer, 2)

    await _checks(consumer, 1)
    assert consumer.delivered == []  # one check could be a record on its way
    await _checks(consumer, 1)
    assert consumer.delivered == [2]

    consumer._committed_offset[TP_REQUESTS] = 3  # processed and committed
    consumer.delivered.clear()
    await _checks(consumer, 2)
    assert consumer.delivered == []


async def test_a_record_queued_for_the_stream_is_left_to_it():
    consumer = _consumer(queued=(2,))
    await _hand_on_and_drop(consumer, 2)
    await _checks(consumer, 3)
    assert consumer.delivered == []


async def test_a_record_dropped_again_after_it_was_handed_on_asks_for_one_rebalance(monkeypatch):
    rejoins: list = []
    monkeypatch.setattr(faust_fixes, "_request_rejoin", rejoins.append)
    consumer = _consumer()
    await _hand_on_and_drop(consumer, 2)
    await _checks(consumer, 2)
    assert consumer.delivered == [2] and rejoins == []
    await _checks(consumer, 1)  # seen once more: only a suspect again
    assert rejoins == []
    await _checks(consumer, 4)  # the stream dropped it again
    assert consumer.delivered == [2] and rejoins == [consumer]


async def test_a_record_acked_while_its_commit_is_under_way_is_not_taken_for_dropped(monkeypatch):
    # faust forgets a partition's acked offsets when it begins their commit, and learns the new
    # committed offset only when the broker answers: in between, the record looks neither acked nor
    # committed. A fault-free cold restart of the bench asked for a rebalance there.
    rejoins: list = []
    monkeypatch.setattr(faust_fixes, "_request_rejoin", rejoins.append)
    consumer = _consumer()
    await _hand_on_and_drop(consumer, 2)
    consumer._last_acked[TP_REQUESTS] = 2
    await _checks(consumer, 3)
    assert consumer.delivered == [] and rejoins == []


async def test_nothing_is_checked_while_flow_is_paused_for_a_rebalance():
    consumer = _consumer()
    await _hand_on_and_drop(consumer, 2)
    consumer.flow_active = False
    await _checks(consumer, 3)
    assert consumer.delivered == []


async def test_while_the_streams_are_busy_a_span_must_stay_the_same_for_long_before_it_is_taken_for_dropped(
    monkeypatch,
):
    # Under load the first make bench on the guard read back driver commands that were only waiting
    # where the guard's look at what is in flight does not reach.
    clock = [1000.0]
    monkeypatch.setattr(faust_fixes, "monotonic", lambda: clock[0])
    consumer = _consumer()
    await _hand_on_and_drop(consumer, 2)
    for _ in range(10):
        consumer._acks += 1  # other records acked meanwhile
        clock[0] += faust_fixes.DROP_CHECK_S
        consumer.find_dropped()
    await asyncio.sleep(0.01)
    assert consumer.delivered == []
    clock[0] += faust_fixes.DROPPED_WHILE_BUSY_S
    consumer._acks += 1
    await _checks(consumer, 1)
    assert consumer.delivered == [2]
