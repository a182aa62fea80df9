"""The gap guard: a jump in the offsets faust reads asks the group to rebalance instead of acking the
records skipped, once per gap; the same gap seen again is filled as faust would."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from faust.types import TP

from streams.faust_fixes import install_gap_guard


class _Loop:
    def __init__(self) -> None:
        self.calls: list = []

    def call_soon_threadsafe(self, callback) -> None:
        self.calls.append(callback)


def _fake_consumer() -> tuple[SimpleNamespace, _Loop, SimpleNamespace]:
    coordinator = SimpleNamespace(request_rejoin=lambda: None)
    loop = _Loop()
    thread = SimpleNamespace(thread_loop=loop, _ensure_consumer=lambda: SimpleNamespace(_coordinator=coordinator))
    return SimpleNamespace(_thread=thread), loop, coordinator


def test_a_gap_is_refused_once_with_a_rebalance_then_filled(monkeypatch):
    filled: list[tuple] = []

    async def original(self, tp, offset_from, offset_to):
        filled.append((tp, offset_from, offset_to))

    monkeypatch.setattr(Consumer, "_add_gap", original)
    install_gap_guard()
    consumer, loop, coordinator = _fake_consumer()
    tp = TP("t.requests", 0)

    asyncio.run(Consumer._add_gap(consumer, tp, 26, 43))
    assert loop.calls == [coordinator.request_rejoin]
    assert filled == []

    asyncio.run(Consumer._add_gap(consumer, tp, 26, 43))  # the same gap after the rebalance: really gone
    assert filled == [(tp, 26, 43)]
    assert len(loop.calls) == 1

    asyncio.run(Consumer._add_gap(consumer, TP("t.requests", 1), 5, 9))  # another partition: refused again
    assert len(loop.calls) == 2


def test_installing_twice_wraps_once(monkeypatch):
    async def original(self, tp, offset_from, offset_to):
        return None

    monkeypatch.setattr(Consumer, "_add_gap", original)
    install_gap_guard()
    first = Consumer._add_gap
    install_gap_guard()
    assert Consumer._add_gap is first
