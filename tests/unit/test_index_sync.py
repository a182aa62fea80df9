"""The index rebuild after a rebalance, against a rebalance that begins while it waits for Redis
(faust begins one from its consumer thread): a zombie fault run lost a trip when such a rebuild loaded
sessions from a table not yet restored and counted as the rebuild of the rebalance that followed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from streams.agents import upkeep
from streams.app import app

REBALANCE = 3
TOKEN = 1_796_122_094_617


class Index:
    """The Redis calls a rebuild makes; `meanwhile` runs inside the first and the last of them."""

    def __init__(self) -> None:
        self.meanwhile = {"epoch": lambda: None, "write": lambda: None}
        self.written: list[tuple[int, int]] = []

    async def current_epoch(self) -> str:
        self.meanwhile["epoch"]()
        return "epoch-1"

    async def unready(self, partitions) -> list[int]:
        return []

    async def write_sessions(self, sessions, token: int, rebuild: bool) -> None:
        self.meanwhile["write"]()
        self.written.append((len(sessions), token))

    async def mark_ready(self, partitions, epoch: str) -> None:
        pass


class Sessions:
    def __init__(self) -> None:
        self.loads = 0
        self.forgotten = 0

    def load_all(self):
        self.loads += 1
        yield SimpleNamespace(driver_id="fd_19")

    def forget_all(self) -> None:
        self.forgotten += 1


class Pings:
    """The ping consumer: which partitions it was started for, in order with the sessions' state."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.calls: list[tuple[str, object, int]] = []

    async def start(self, partitions: set[int]) -> None:
        self.calls.append(("start", partitions, self.sessions.forgotten))

    async def stop(self) -> None:
        self.calls.append(("stop", None, self.sessions.forgotten))


@pytest.fixture
def worker(monkeypatch):
    runtime = app.runtime
    index, sessions = Index(), Sessions()
    pings = Pings(sessions)
    writer = SimpleNamespace(unready=set(), epoch=None, rebalance=-1, catch_up=None, forget_all=lambda: None)
    monkeypatch.setattr(runtime, "index", index)
    monkeypatch.setattr(runtime, "sessions", sessions)
    monkeypatch.setattr(runtime, "index_writer", writer)
    monkeypatch.setattr(runtime, "pings", pings)
    monkeypatch.setattr(runtime.fence, "token", TOKEN)
    monkeypatch.setattr(app, "_consumer", SimpleNamespace(assignment=lambda: {TP(runtime.names.driver_commands, 0)}))
    monkeypatch.setattr(app, "rebalancing_count", REBALANCE)
    monkeypatch.setattr(app, "rebalancing", False)
    return SimpleNamespace(runtime=runtime, index=index, sessions=sessions, writer=writer, pings=pings)


def _rebalance_begins(worker) -> None:
    app.rebalancing_count += 1
    worker.runtime.fence.token += 1000


def test_a_rebuild_loads_the_sessions_and_records_the_rebalance_it_was_for(worker) -> None:
    asyncio.run(upkeep.sync_index(worker.runtime))
    assert worker.sessions.loads == 1
    assert worker.index.written == [(1, TOKEN)]
    assert (worker.writer.epoch, worker.writer.rebalance) == ("epoch-1", REBALANCE)


def test_a_rebalance_that_begins_before_the_sessions_are_loaded_stops_the_rebuild(worker) -> None:
    worker.index.meanwhile["epoch"] = lambda: _rebalance_begins(worker)
    asyncio.run(upkeep.sync_index(worker.runtime))
    assert worker.sessions.loads == 0 and worker.index.written == []
    assert worker.writer.rebalance == -1  # the next tick rebuilds for the new rebalance


def test_a_rebalance_that_begins_while_the_index_is_written_is_left_for_the_next_rebuild(worker) -> None:
    worker.index.meanwhile["write"] = lambda: _rebalance_begins(worker)
    asyncio.run(upkeep.sync_index(worker.runtime))
    assert worker.index.written == [(1, TOKEN)]  # the token of the sessions it loaded, not the newer one
    assert worker.writer.rebalance == REBALANCE


def test_sessions_read_during_a_restore_are_dropped_when_it_completes(worker) -> None:
    asyncio.run(upkeep.forget_unrestored(app))
    assert worker.sessions.forgotten == 1
    # Pings are read again once the sessions are forgotten, for this worker's partitions.
    assert worker.pings.calls == [("start", {0}, 1)]


def test_pings_stop_before_a_revoked_partitions_sessions_are_forgotten(worker, monkeypatch) -> None:
    monkeypatch.setattr(worker.runtime, "heartbeat_checks", {"fd_19": 1})
    asyncio.run(upkeep.forget_revoked(app, revoked={TP(worker.runtime.names.driver_commands, 0)}))
    assert worker.pings.calls == [("stop", None, 0)]
    assert worker.sessions.forgotten == 1
