"""The bulk catch-up's reader against the real broker: each partition read from after its store's
persisted offset up to the log's end as the catch-up began, in order, each record once."""

from __future__ import annotations

import asyncio
import socket
import uuid
from types import SimpleNamespace

from faust.types import TP

from infra.settings import Settings
from streams.restore import FETCH_RECORDS, BulkRestore
from tests.integration.harness import BOOTSTRAP, topic_with

PER_PARTITION = 3_000


async def _changelog(partitions: int, per_partition: int = PER_PARTITION) -> str:
    records = ((partition, f"k{i % 50}".encode(), f"v{i}".encode())
               for i in range(per_partition) for partition in range(partitions))
    return await topic_with(f"bulk.{uuid.uuid4().hex[:10]}-changelog", partitions, records)


def _not_expected() -> None:
    raise AssertionError("the catch-up failed")


class _Table:
    def __init__(self, persisted: dict[TP, int | None]) -> None:
        self.name = "test_table"
        self.data = SimpleNamespace(persisted_offset=persisted.get)
        self.applied: list[tuple[int, int, bytes]] = []

    def apply_changelog_batch(self, batch) -> None:
        self.applied.extend((e.message.partition, e.message.offset, e.message.value) for e in batch)


def _restore(table: _Table, tps: list[TP], still_current=lambda: True) -> list[int]:
    counted: list[int] = []
    restore = BulkRestore(Settings(kafka_bootstrap_servers=BOOTSTRAP, bulk_restore_min_records=1_000),
                          counted.append, on_failed=_not_expected)
    asyncio.run(asyncio.wait_for(restore.catch_up(table, tps, still_current), 60))
    return counted


def test_each_partition_is_read_after_its_persisted_offset_to_its_end_in_order():
    topic = asyncio.run(_changelog(3))
    fresh, warm, current = TP(topic, 0), TP(topic, 1), TP(topic, 2)
    table = _Table({fresh: None, warm: 1_199, current: PER_PARTITION - 10})

    counted = _restore(table, [fresh, warm, current])

    by_partition = {p: [(o, v) for q, o, v in table.applied if q == p] for p in range(3)}
    assert by_partition[0] == [(o, f"v{o}".encode()) for o in range(PER_PARTITION)]
    assert by_partition[1] == [(o, f"v{o}".encode()) for o in range(1_200, PER_PARTITION)]
    assert by_partition[2] == []  # 9 records behind: left to faust's recovery
    assert sum(counted) == len(table.applied)


def test_a_rebalance_stops_the_catch_up_between_fetches():
    topic = asyncio.run(_changelog(1, per_partition=FETCH_RECORDS + 5_000))

    def stopping_after(answers: list[bool]) -> list:
        table = _Table({})
        replies = iter(answers)
        _restore(table, [TP(topic, 0)], still_current=lambda: next(replies))
        return table.applied

    assert stopping_after([False]) == []  # before the reader is given its partitions
    assert stopping_after([True, False]) == []  # given them, stopped before its first fetch
    assert 0 < len(stopping_after([True, True, False])) <= FETCH_RECORDS  # after one fetch


def test_a_catch_up_that_cannot_reach_the_broker_is_counted_and_left_to_faust():
    """It runs inside faust's rebalance: raising there would stop the worker's rebalance."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody_listens = f"127.0.0.1:{closed.getsockname()[1]}"
    failures: list[None] = []
    restore = BulkRestore(Settings(kafka_bootstrap_servers=nobody_listens), lambda n: None,
                          lambda: failures.append(None))
    asyncio.run(asyncio.wait_for(restore.catch_up(_Table({}), [TP("t-changelog", 0)], lambda: True), 30))
    assert failures == [None]
