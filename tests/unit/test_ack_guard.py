"""The ack guard refuses the acks faust makes for records it skipped (fetched under an earlier
generation, or while flow control is paused for a rebalance), but lets through, while paused, the
acks of records an agent processed to the end: a rebalance waits for those."""

from __future__ import annotations

from types import SimpleNamespace

from faust.transport.consumer import Consumer

from streams.faust_fixes import acking_processed, install_ack_guard


def _consumer(active: bool) -> SimpleNamespace:
    return SimpleNamespace(app=SimpleNamespace(consumer_generation_id=3,
                                               flow_control=SimpleNamespace(is_active=lambda: active)))


def _guarded_ack(monkeypatch) -> list[int]:
    passed: list[int] = []

    def original(self, message) -> bool:
        passed.append(message.offset)
        return True

    monkeypatch.setattr(Consumer, "ack", original)
    install_ack_guard()
    return passed


def test_while_paused_only_the_acks_of_processed_records_of_this_generation_pass(monkeypatch):
    passed = _guarded_ack(monkeypatch)
    paused = _consumer(active=False)
    current, earlier = SimpleNamespace(generation_id=3, offset=1), SimpleNamespace(generation_id=2, offset=2)

    assert Consumer.ack(paused, current) is False  # skipped by the paused stream
    with acking_processed():
        assert Consumer.ack(paused, current) is True
        assert Consumer.ack(paused, earlier) is False  # its partition may be another worker's now
    assert Consumer.ack(paused, current) is False  # the permission ends with the block
    assert passed == [1]


def test_when_flowing_acks_of_this_generation_pass_and_older_ones_do_not(monkeypatch):
    passed = _guarded_ack(monkeypatch)
    flowing = _consumer(active=True)
    assert Consumer.ack(flowing, SimpleNamespace(generation_id=3, offset=7)) is True
    assert Consumer.ack(flowing, SimpleNamespace(generation_id=1, offset=8)) is False
    assert passed == [7]
