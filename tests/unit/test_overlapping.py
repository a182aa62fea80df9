"""process_overlapping: later records are processed while earlier ones wait for the broker, and every
record is acked only after its wait, in the order the records came (the commit never passes one)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from streams import faust_fixes
from streams.dlq import process_overlapping


class Stream:
    """The part of a Faust stream the runner uses: events, then manual acks."""

    def __init__(self, count: int) -> None:
        self.events_in = [SimpleNamespace(message=_message(offset)) for offset in range(count)]
        self.acked: list[int] = []
        self.acked_as_processed: list[bool] = []
        self.manual = False

    def noack(self) -> Stream:
        self.manual = True
        return self

    async def events(self):
        for event in self.events_in:
            yield event
        while len(self.acked) < len(self.events_in):  # a real stream waits for more records
            await asyncio.sleep(0.001)

    async def ack(self, event) -> None:
        self.acked.append(event.message.offset)
        # Acked as done, so that the ack guard lets it through while a rebalance pauses the stream.
        self.acked_as_processed.append(faust_fixes._ACKING_PROCESSED.get())


class DeadLetters:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    async def send(self, source, stage, error, attempts=1) -> None:
        self.sent.append((source.offset, type(error).__name__))


def _message(offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic="requests", partition=0, offset=offset, timestamp=0.0, key=b"k", value=b"v",
                           headers=[])


async def _run(stream: Stream, dead: DeadLetters, process, depth: int = 8) -> None:
    await asyncio.wait_for(process_overlapping(stream, dead, "assignment", process, depth), timeout=5)


async def test_acks_follow_the_records_order_and_each_waits_for_its_answer():
    released = {offset: asyncio.Event() for offset in range(3)}
    events: list[str] = []

    async def process(message):
        events.append(f"processed {message.offset}")

        async def taken():
            await released[message.offset].wait()
            events.append(f"taken {message.offset}")

        return taken

    stream, dead = Stream(3), DeadLetters()
    runner = asyncio.ensure_future(_run(stream, dead, process))
    await asyncio.sleep(0.01)
    # Every record was processed although no answer was taken yet.
    assert events == ["processed 0", "processed 1", "processed 2"] and stream.acked == []
    released[2].set()
    released[1].set()
    await asyncio.sleep(0.01)
    assert stream.acked == []  # record 0 still waits, so nothing after it may count as done
    released[0].set()
    await runner
    assert stream.manual and stream.acked == [0, 1, 2] and dead.sent == []
    assert stream.acked_as_processed == [True, True, True]


async def test_no_more_than_depth_answers_wait_while_records_are_processed():
    gate = asyncio.Event()
    processed: list[int] = []

    async def process(message):
        processed.append(message.offset)

        async def taken():
            await gate.wait()

        return taken

    stream = Stream(6)
    runner = asyncio.ensure_future(_run(stream, DeadLetters(), process, depth=2))
    await asyncio.sleep(0.01)
    # One wait being completed, two queued, and the record that found the queue full: no further.
    assert processed == [0, 1, 2, 3]
    gate.set()
    await runner
    assert processed == list(range(6)) and stream.acked == list(range(6))


async def test_a_failed_record_or_a_failed_wait_is_dead_lettered_and_acked_in_its_place():
    async def process(message):
        if message.offset == 1:
            raise ValueError("cannot decide")

        async def taken():
            if message.offset == 2:
                raise ConnectionError("the broker did not take the answer")

        return None if message.offset == 3 else taken

    stream, dead = Stream(5), DeadLetters()
    await _run(stream, dead, process)
    assert dead.sent == [(1, "ValueError"), (2, "ConnectionError")]
    assert stream.acked == [0, 1, 2, 3, 4]


async def test_records_are_handled_at_once_started_in_their_order():
    # The assignment's Chooser gathers the requests in progress into one call to Redis: that needs every
    # record's processing started before an earlier one's is over, and started in the records' order.
    gate = asyncio.Event()
    started: list[int] = []

    async def process(message):
        started.append(message.offset)
        await gate.wait()
        return None

    stream = Stream(4)
    runner = asyncio.ensure_future(_run(stream, DeadLetters(), process, depth=8))
    await asyncio.sleep(0.01)
    assert started == [0, 1, 2, 3] and stream.acked == []
    gate.set()
    await runner
    assert stream.acked == [0, 1, 2, 3]
