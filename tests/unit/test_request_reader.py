"""The request reader of a worker expelled from its group (paused past the session timeout) decides
nothing more: the partitions are another worker's, and its consumer, of no group, would read on."""

from __future__ import annotations

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
