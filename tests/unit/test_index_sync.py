"""The index rebuild after a rebalance, against a rebalance that begins while it waits for Redis
(faust begins one from its consumer thread): a zombie fault run lost a trip when such a rebuild loaded
sessions from a table not yet restored and counted as the rebuild of the rebalance that followed. And
the order in which the app tells its partition services that partitions moved."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from infra.settings import Settings
from streams.app import DispatchApp
from streams.index_writer import IndexWriter
from streams.metrics import Metrics
from streams.runtime import PartitionService

REBALANCE = 3
TOKEN = 1_796_122_094_617


class Index:
    """The Redis calls a rebuild makes; `meanwhile` runs inside the first and the last of them."""

    def __init__(self) -> None:
        self.meanwhile = {"epoch": lambda: None, "write": lambda: None}
        self.written: list[tuple[int, int]] = []
        self.unready_partitions: list[int] = []
        self.readied: list[int] = []

    async def current_epoch(self) -> str:
        self.meanwhile["epoch"]()
        return "epoch-1"

    async def unready(self, partitions) -> list[int]:
        return [p for p in self.unready_partitions if p in partitions]

    async def write_sessions(self, sessions, token: int, rebuild: bool) -> None:
        self.meanwhile["write"]()
        self.written.append((len(sessions), token))

    async def mark_ready(self, partitions, epoch: str) -> None:
        self.readied += partitions


class Owner:
    """The worker as the rebuild sees it (streams.index_writer.PartitionOwner)."""

    def __init__(self) -> None:
        self.rebalance, self.token, self.loads = REBALANCE, TOKEN, 0
        self.is_settled = True
        self.applied = {0: 0}
        self.ends = {0: 5}

    def settled(self) -> bool:
        return self.is_settled

    def rebalances(self) -> int:
        return self.rebalance

    def fence_token(self) -> int:
        return self.token

    def driver_partitions(self) -> set[int]:
        return {0}

    async def driver_command_ends(self, partitions) -> dict[int, int]:
        return {p: self.ends[p] for p in partitions}

    def driver_commands_applied(self, partition: int) -> int:
        return self.applied[partition]

    def load_sessions(self) -> list:
        self.loads += 1
        return [SimpleNamespace(driver_id="fd_19")]

    def rebalance_begins(self) -> None:
        self.rebalance += 1
        self.token += 1000


@pytest.fixture
def rebuild():
    index, owner = Index(), Owner()
    writer = IndexWriter(index, Metrics(), Settings())
    return SimpleNamespace(index=index, owner=owner, writer=writer, sync=lambda: asyncio.run(writer.sync(owner)))


def test_a_rebuild_loads_the_sessions_and_records_the_rebalance_it_was_for(rebuild) -> None:
    rebuild.sync()
    assert rebuild.owner.loads == 1
    assert rebuild.index.written == [(1, TOKEN)]
    assert rebuild.writer.epoch == "epoch-1"
    rebuild.sync()  # nothing changed since: nothing to rebuild
    assert rebuild.owner.loads == 1


def test_a_rebalance_that_begins_before_the_sessions_are_loaded_stops_the_rebuild(rebuild) -> None:
    rebuild.index.meanwhile["epoch"] = rebuild.owner.rebalance_begins
    rebuild.sync()
    assert rebuild.owner.loads == 0 and rebuild.index.written == []
    assert rebuild.writer.epoch is None
    rebuild.index.meanwhile["epoch"] = lambda: None
    rebuild.sync()  # the next tick rebuilds for the new rebalance
    assert rebuild.index.written == [(1, TOKEN + 1000)]


def test_a_rebalance_that_begins_while_the_index_is_written_is_left_for_the_next_rebuild(rebuild) -> None:
    rebuild.index.meanwhile["write"] = rebuild.owner.rebalance_begins
    rebuild.sync()
    assert rebuild.index.written == [(1, TOKEN)]  # the token of the sessions it loaded, not the newer one
    rebuild.index.meanwhile["write"] = lambda: None
    rebuild.sync()  # recorded as the rebuild of the rebalance before: this one rebuilds again
    assert rebuild.index.written == [(1, TOKEN), (1, TOKEN + 1000)]


def test_an_unready_partition_waits_for_the_driver_commands_sent_before_the_loss(rebuild) -> None:
    rebuild.index.unready_partitions = [0]
    rebuild.sync()
    assert rebuild.index.written == [] and rebuild.index.readied == []
    rebuild.owner.ends[0] = 9  # commands sent after the loss was noticed are not waited for
    rebuild.owner.applied[0] = 5
    rebuild.sync()
    assert rebuild.index.written == [(1, TOKEN)] and rebuild.index.readied == [0]


def test_an_unsettled_worker_does_not_rebuild(rebuild) -> None:
    rebuild.owner.is_settled = False
    rebuild.sync()
    assert rebuild.owner.loads == 0


class Recorded(PartitionService):
    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls

    async def restored(self, partitions: set[int]) -> None:
        self.calls.append(("restored", self.name, partitions))

    async def revoked(self) -> None:
        self.calls.append(("revoked", self.name))


SERVICES = ["sessions", "index_writer", "progress", "pings", "supply_demand", "request_batches"]


def _recorded(monkeypatch) -> tuple[DispatchApp, list]:
    """An app whose partition services only record their calls."""
    app = DispatchApp(Settings())
    calls: list = []
    for field in SERVICES:
        monkeypatch.setattr(app.runtime, field, Recorded(field, calls))
    monkeypatch.setattr(DispatchApp, "driver_partitions", lambda self: {0})
    return app, calls


def test_partition_services_start_in_order_and_stop_in_reverse(monkeypatch) -> None:
    """Sessions read while the tables were restored are dropped before pings are read again; pings
    stop before anything of theirs is forgotten; the supply/demand feed takes its partitions over before
    requests are read, which are read last and stopped first."""
    app, calls = _recorded(monkeypatch)
    app._fence_taken.set()  # the assignment's fence token is in place
    asyncio.run(app._partitions_restored(app))
    asyncio.run(app._partitions_revoked(app, revoked=set()))
    assert calls == [("restored", name, {0}) for name in SERVICES] + [("revoked", name) for name in reversed(SERVICES)]


def test_nothing_resumes_before_the_assignments_fence_token_is_taken(monkeypatch) -> None:
    """faust restores an assignment's tables while its fence token is still being asked of the broker:
    the services (and with them every write) start only once the token is in place, and a revoke
    makes the next assignment wait for its own."""
    app, calls = _recorded(monkeypatch)

    async def rebalance() -> None:
        restoring = asyncio.create_task(app._partitions_restored(app))
        await asyncio.sleep(0.05)
        assert calls == []
        app._fence_taken.set()
        await restoring
        assert calls == [("restored", name, {0}) for name in SERVICES]
        await app._partitions_revoked(app, revoked=set())
        assert not app._fence_taken.is_set()

    asyncio.run(rebalance())
