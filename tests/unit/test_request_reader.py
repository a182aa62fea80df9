"""The request reader of a worker expelled from its group (paused past the session timeout) decides
nothing more: the partitions are another worker's, and its consumer, of no group, would read on."""

from __future__ import annotations

import time
from types import SimpleNamespace

from aiokafka import TopicPartition

from streams.agents.requests import RequestBatches

TP0 = TopicPartition("assignment_requests.4_-7", 0)
REQUEST = SimpleNamespace(offset=41)


class PausableConsumer:
    def __init__(self) -> None:
        self.paused: tuple = ()

    def assignment(self) -> set[TopicPartition]:
        return {TP0}

    def pause(self, *tps: TopicPartition) -> None:
        self.paused = tps


def reader(coordinator_generation: int) -> tuple[RequestBatches, list, PausableConsumer]:
    decided: list = []

    async def handle(runtime, records):
        decided.extend(records)

        async def taken() -> None:
            pass

        return taken

    thread = SimpleNamespace(_ensure_consumer=lambda: SimpleNamespace(
        _coordinator=SimpleNamespace(generation=coordinator_generation)))
    app = SimpleNamespace(conf=SimpleNamespace(id="gd"), consumer=SimpleNamespace(_thread=thread),
                          consumer_generation_id=7,
                          runtime=SimpleNamespace(requests=SimpleNamespace(read=lambda: None),
                                                  settings=SimpleNamespace(answers_in_flight=256)))
    batches = RequestBatches(app, (TP0.topic,), handle)
    batches._consumer = PausableConsumer()
    return batches, decided, batches._consumer


async def test_a_member_of_the_group_decides_what_it_reads():
    batches, decided, consumer = reader(coordinator_generation=7)
    await batches._take({TP0: [REQUEST]})
    await batches._finish()
    assert decided == [REQUEST] and consumer.paused == ()
    assert batches._answered == {TP0: 42}  # committed at the next commit


async def test_an_expelled_worker_leaves_what_it_read_and_stops_reading():
    batches, decided, consumer = reader(coordinator_generation=8)  # the group moved on without it
    await batches._take({TP0: [REQUEST]})
    assert decided == [] and consumer.paused == (TP0,) and batches._answered == {}


class ScriptedConsumer:
    """getmany answers from a script: the first fetch's batch, then what each later fetch finds."""

    def __init__(self, *answers: dict) -> None:
        self.answers = list(answers)
        self.fetches: list[float] = []

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.fetches.append(time.monotonic())
        return self.answers.pop(0) if self.answers else {}


def record(offset: int, sent_ms: float) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, timestamp=int(sent_ms))


async def window_of(first_sent_ms: float, window_ms: int) -> tuple[dict, float]:
    batches, _, _ = reader(coordinator_generation=7)
    batches._app.runtime.settings = SimpleNamespace(answers_in_flight=256, matching="batch", match_window_ms=window_ms)
    tp1 = TopicPartition(TP0.topic, 1)
    consumer = ScriptedConsumer({TP0: [record(1, first_sent_ms)]}, {TP0: [record(2, 0)], tp1: [record(7, 0)]},
                                {TP0: [record(3, 0)]})
    started = time.monotonic()
    batch = await batches._fetch(consumer, max_records=64)
    return {tp.partition: [r.offset for r in records] for tp, records in batch.items()}, time.monotonic() - started


async def test_batch_matching_reads_the_rest_of_the_window_before_deciding():
    batch, waited = await window_of(time.time() * 1000, window_ms=80)
    assert batch == {0: [1, 2, 3], 1: [7]}
    assert 0.06 < waited < 0.5


async def test_a_backlogs_window_has_passed_and_is_read_at_once():
    batch, waited = await window_of(time.time() * 1000 - 5000, window_ms=80)
    assert batch == {0: [1, 2, 3], 1: [7]}
    assert waited < 0.05
