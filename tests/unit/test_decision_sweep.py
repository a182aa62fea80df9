"""The decisions sweep reads a bounded number of entries a call, resumes where it stopped, and moves on
to the next partition once one is read to its end, so no partition waits on a large one."""

from __future__ import annotations

import orjson

from streams.logic.assignment import Decision
from streams.tables import DecisionStore

OLD, RECENT = "2024-01-15T10:30:05.000Z", "2024-01-16T10:30:05.000Z"


class PartitionedEntries:
    """The two reads DecisionStore.expired makes of a table: its active partitions and their entries."""

    def __init__(self, partitions: dict[int, dict[bytes, dict]]) -> None:
        self.partitions = partitions

    def active_partitions(self) -> list[int]:
        return sorted(self.partitions)

    def entries(self, partition: int, start: bytes | None = None):
        for key in sorted(self.partitions[partition]):
            if start is None or key >= start:
                yield key, orjson.dumps(self.partitions[partition][key])


def _old(key: str) -> dict:
    return Decision(key, OLD, driver_id="d", eta=3).record()


def test_the_sweep_reads_its_budget_resumes_and_visits_every_partition():
    table = PartitionedEntries({
        0: {f"a{i}".encode(): _old(f"a{i}") for i in range(5)},
        1: {b"b0": _old("b0"), b"b1": Decision("b1", RECENT, error="no").record()},
    })
    store = DecisionStore(table)
    keep = lambda decision: decision.decided_at == RECENT  # noqa: E731
    assert store.expired(keep, 3) == [(b"a0", 0), (b"a1", 0), (b"a2", 0)]
    assert store.expired(keep, 3) == [(b"a3", 0), (b"a4", 0)]  # the rest of partition 0, then its turn ends
    assert store.expired(keep, 3) == [(b"b0", 1)]  # kept ones stay
    assert store.expired(keep, 3) == [(b"a0", 0), (b"a1", 0), (b"a2", 0)]  # a new pass


def test_a_sweep_of_no_partitions_finds_nothing():
    assert DecisionStore(PartitionedEntries({})).expired(lambda d: False, 10) == []
