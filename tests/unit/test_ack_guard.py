"""The ack guard refuses the acks faust makes for records it skipped: fetched under an earlier
generation, or while flow control is paused for a rebalance."""

from __future__ import annotations

from types import SimpleNamespace

from faust.transport.consumer import Consumer

from streams.faust_fixes import GuardedConsumer
from tests.unit.guarded import guarded


def _consumer(active: bool, crash_reason: BaseException | None = None) -> GuardedConsumer:
    flow_control = SimpleNamespace(is_active=lambda: active)
    return guarded(app=SimpleNamespace(consumer_generation_id=3, flow_control=flow_control, crash_reason=crash_reason))


def _guarded_ack(monkeypatch) -> list[int]:
    """faust's own ack, as our consumer's super() finds it, replaced by one that notes what passed."""
    passed: list[int] = []

    def faust_ack(self, message) -> bool:
        passed.append(message.offset)
        return True

    monkeypatch.setattr(Consumer, "ack", faust_ack)
    return passed


def test_while_paused_no_ack_passes(monkeypatch):
    passed = _guarded_ack(monkeypatch)
    paused = _consumer(active=False)
    assert paused.ack(SimpleNamespace(generation_id=3, offset=1)) is False
    assert paused.ack(SimpleNamespace(generation_id=2, offset=2)) is False
    assert passed == []


def test_when_flowing_acks_of_this_generation_pass_and_older_ones_do_not(monkeypatch):
    passed = _guarded_ack(monkeypatch)
    flowing = _consumer(active=True)
    assert flowing.ack(SimpleNamespace(generation_id=3, offset=7)) is True
    assert flowing.ack(SimpleNamespace(generation_id=1, offset=8)) is False
    assert passed == [7]


def test_a_crashed_worker_acks_nothing_more(monkeypatch):
    """A worker stopping on a failure (its store refused a write) must not ack the record it was cut
    short on: the partition's next owner processes it."""
    passed = _guarded_ack(monkeypatch)
    crashed = _consumer(active=True, crash_reason=RuntimeError("the store refused a write"))
    assert crashed.ack(SimpleNamespace(generation_id=3, offset=7)) is False
    assert passed == []
