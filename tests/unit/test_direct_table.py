"""A table write's changelog acknowledgement: the persisted offset advances only on success; a write the
broker did not take is counted and logged instead."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka.errors import KafkaTimeoutError

from streams.tables import DirectTable


def test_only_acknowledged_writes_advance_the_persisted_offset_and_failures_are_counted() -> None:
    failures: list[int] = []
    advanced: list[asyncio.Future] = []
    table = SimpleNamespace(name="driver_sessions", _on_write_failed=lambda: failures.append(1),
                            _on_changelog_sent=advanced.append)
    loop = asyncio.new_event_loop()
    try:
        failed, cancelled, taken = loop.create_future(), loop.create_future(), loop.create_future()
        failed.set_exception(KafkaTimeoutError())
        cancelled.cancel()
        taken.set_result("record metadata")
        for acknowledgement in (failed, cancelled, taken):
            DirectTable._on_written(table, acknowledgement)
    finally:
        loop.close()
    assert failures == [1, 1]
    assert advanced == [taken]
