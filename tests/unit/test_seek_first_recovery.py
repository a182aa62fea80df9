"""The end of a rebalance, with faust's real flow control and stream queues and a consumer that hands
a record on as soon as its partition fetches: every record fetched once the stream partitions resume
must still be queued for its stream when the worker is ready. In faust's own order (resume the
partitions, await the seek, resume flow control, which clears every queue) the record handed on
during the seek is cleared, and its partition's fetch position is already past it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
import pytest
from faust.types import TP

from streams.faust_fixes import SeekFirstRecovery, TableManager

REQUESTS = TP("requests", 0)


class FetchingConsumer:
    """Stands in for the app's consumer: a resumed stream partition hands its next record to the
    stream's queue within one turn of the event loop, as faust's fetcher does."""

    def __init__(self, queue: asyncio.Queue, calls: list[str]) -> None:
        self.queue = queue
        self.calls = calls
        self.resumed: set[TP] = set()

    def assignment(self) -> set[TP]:
        return {REQUESTS}

    def resume_partitions(self, tps: set[TP]) -> None:
        self.calls.append("resume_partitions")
        self.resumed |= tps
        asyncio.get_running_loop().call_soon(self.queue.put_nowait, "request at the committed offset")

    async def perform_seek(self) -> None:
        self.calls.append("perform_seek")
        await asyncio.sleep(0.01)  # the seek runs in faust's consumer thread

    def resume_flow(self) -> None:
        self.calls.append("resume_flow")


def _recovery(app: faust.App, consumer: FetchingConsumer) -> SeekFirstRecovery:
    app.consumer = consumer
    app._fetcher = SimpleNamespace(maybe_start=lambda: asyncio.sleep(0))
    recovery = app.tables.recovery

    async def wait(coro, timeout=None):
        await coro

    recovery._wait = wait
    return recovery


# After a changelog restore, and when the app has no table to restore.
@pytest.mark.parametrize("ending", ["on_recovery_completed", "_resume_streams"])
async def test_a_record_fetched_once_the_stream_partitions_resume_stays_queued_for_its_stream(ending):
    app = faust.App("seek-first-test", TableManager=TableManager)
    queue = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
    app.flow_control.resume()  # active, as after a changelog restore
    calls: list[str] = []
    consumer = FetchingConsumer(queue, calls)
    recovery = _recovery(app, consumer)
    assert isinstance(recovery, SeekFirstRecovery)

    await getattr(recovery, ending)(generation_id=app.consumer_generation_id)
    await asyncio.sleep(0.05)

    assert consumer.resumed == {REQUESTS}
    assert calls.index("perform_seek") < calls.index("resume_partitions")
    assert queue.qsize() == 1
    assert recovery.completed.is_set()
