"""Topics a reader of ours reads (streams.agents.requests) stay subscribed in faust's consumer, so the
group assigns their partitions, but faust fetches none of their records."""

from __future__ import annotations

from types import SimpleNamespace

from faust.transport.consumer import ThreadDelegateConsumer
from faust.types import TP

from tests.unit.guarded import guarded

REQUESTS, STATUS = TP("assignment_requests.4_-7", 0), TP("driver_status", 0)


def _fetching(monkeypatch) -> list[set]:
    """faust's fetch, as our consumer's super() finds it, replaced by one that notes what it was asked."""
    asked: list[set] = []

    async def faust_getmany(self, active_partitions, timeout):
        asked.append(set(active_partitions))
        return {tp: ["record"] for tp in active_partitions}

    monkeypatch.setattr(ThreadDelegateConsumer, "_getmany", faust_getmany)
    return asked


async def test_partitions_read_elsewhere_are_left_out_of_faust_fetches(monkeypatch):
    asked = _fetching(monkeypatch)
    consumer = guarded(app=SimpleNamespace(read_elsewhere={REQUESTS.topic}))
    assert await consumer._getmany({REQUESTS, STATUS}, timeout=0.01) == {STATUS: ["record"]}
    assert asked == [{STATUS}]


async def test_with_only_partitions_read_elsewhere_faust_fetches_nothing(monkeypatch):
    # Asked for no partition, aiokafka would fetch every assigned one.
    asked = _fetching(monkeypatch)
    consumer = guarded(app=SimpleNamespace(read_elsewhere={REQUESTS.topic}))
    assert await consumer._getmany({REQUESTS}, timeout=0.01) == {}
    assert asked == []
