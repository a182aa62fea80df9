"""A table write's changelog acknowledgement: the persisted offset advances only on success; a write the
broker did not take is counted and logged instead. A write the local store refuses stops the worker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaTimeoutError

from streams.dlq import WorkerFailure, guarded
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


class _RefusingStore:
    """A partition's RocksDB store on a full disk: rocksdict raises a bare Exception."""

    def put(self, key: bytes, value: bytes) -> None:
        raise Exception("IO error: No space left on device: While appending to file: 000004.log")

    delete = put


def test_a_write_the_store_refuses_stops_the_worker_instead_of_failing_the_record() -> None:
    failures: list[int] = []
    crashes: list[BaseException] = []

    async def crash(reason: BaseException) -> None:
        crashes.append(reason)

    table = SimpleNamespace(name="driver_sessions", data=SimpleNamespace(_db_for_partition=lambda p: _RefusingStore()),
                            _on_store_failed=lambda: failures.append(1), app=SimpleNamespace(crash=crash))
    dead_letters = SimpleNamespace(send=None)  # never called: a record is not dead-lettered for this

    async def write() -> None:
        await DirectTable._into_store(table, 2, lambda db: db.put(b"fd_1", b"{}"))

    with pytest.raises(WorkerFailure, match=r"driver_sessions\[2\] refused a write: IO error: No space"):
        asyncio.run(guarded(dead_letters, SimpleNamespace(topic="t", partition=2, offset=9), "sessions", write))
    assert failures == [1]
    assert len(crashes) == 1 and isinstance(crashes[0], WorkerFailure)
