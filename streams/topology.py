"""Where every record goes. For each input: the topics it reads, what reads them, the handler of each
record or stream, the state it touches and the topics it writes; for each timer, its period, handler,
state and output. streams.app wires the worker from these tables and nothing else, so the handler of
topic X is one look away, and `geodispatch topology` prints them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infra.settings import Role, Settings
from infra.topics import (
    DECISIONS_TABLE,
    DLQ,
    DRIVER_COMMANDS,
    LOCATIONS,
    PRESENCE,
    REQUESTS,
    RESPONSES,
    SESSIONS_TABLE,
    STATUS,
    SUPPLY_DEMAND,
    TRACKING,
    TRIP_EVENTS,
    TopicNames,
)
from streams import supply_demand
from streams.agents import assignment, feed, pings, requests, retention, sessions, upkeep
from streams.topics import raw_topic

if TYPE_CHECKING:
    from streams.app import DispatchApp

# What reads an input's topics.
FAUST_AGENT = "faust agent"  # one faust agent; the handler gets the stream: (runtime, stream)
PING_BATCHES = "ping batches"  # streams.agents.pings.PingBatches; the handler gets blocks: (runtime, records)
# streams.agents.requests.RequestBatches; the handler gets blocks, (runtime, records), and returns the
# wait for their answers to be taken.
REQUEST_BATCHES = "request batches"

# The state handlers touch, as a reader would look for it.
SESSIONS = f"table {SESSIONS_TABLE}"
DECISIONS = f"table {DECISIONS_TABLE}"
INDEX = "Redis index: sessions, available drivers by cell (written by streams.index_writer)"
SUPPLY_COUNTS = "available drivers per cell (streams.logic.supply_demand, told by the sessions store)"
DEMAND_WINDOW = "answers per cell over the window (streams.logic.supply_demand)"
RESERVATIONS = "Redis index: reservations, decisions (streams/lua/reserve.lua, record_decisions.lua, settle.lua)"


@dataclass(frozen=True)
class Input:
    name: str
    role: Role  # the processes that read it (Settings.roles)
    reads: Callable[[TopicNames, tuple[str, ...]], tuple[str, ...]]  # (names, regions) -> topics
    reader: str
    handler: Callable[..., Awaitable[None]]
    state: tuple[str, ...]
    writes: tuple[str, ...]
    # The regional topic families read, for the table printed: `reads` names them for given regions.
    topics: str
    # PING_BATCHES: what the records read back when partitions are assigned go to (the ping log is the
    # changelog of position): (runtime, records) -> how many were passed over.
    recover: Callable[..., int] | None = None


@dataclass(frozen=True)
class Timer:
    name: str
    role: Role
    every_s: Callable[[Settings], float]
    handler: Callable[[DispatchApp], Awaitable[None]]
    state: tuple[str, ...]
    writes: tuple[str, ...]


INPUTS: tuple[Input, ...] = (
    Input(
        name="driver_pings",
        role="sessions",
        reads=lambda names, regions: tuple(names.locations(region) for region in regions),
        topics=f"{LOCATIONS}.{{geo}}",
        reader=PING_BATCHES,
        handler=sessions.process_pings,
        recover=sessions.recover_positions,
        state=(SESSIONS, INDEX),
        writes=(PRESENCE, TRACKING, DLQ),
    ),
    Input(
        name="driver_sessions",
        role="sessions",
        reads=lambda names, regions: (names.status, names.trip_events, names.driver_commands),
        topics=f"{STATUS}, {TRIP_EVENTS}, {DRIVER_COMMANDS}",
        reader=FAUST_AGENT,
        handler=sessions.driver_sessions,
        state=(SESSIONS, INDEX),
        writes=(PRESENCE, TRACKING, DLQ),
    ),
    Input(
        name="assignments",
        role="assignments",
        reads=lambda names, regions: tuple(names.requests(region) for region in regions),
        topics=f"{REQUESTS}.{{geo}}",
        reader=REQUEST_BATCHES,
        handler=assignment.decide_requests,
        state=(DECISIONS, RESERVATIONS),
        writes=(RESPONSES, DRIVER_COMMANDS, DLQ),
    ),
)

INDEX_FLUSH_EVERY_S = 0.01

TIMERS: tuple[Timer, ...] = (
    Timer("index_flush", "sessions", lambda settings: INDEX_FLUSH_EVERY_S, upkeep.flush_index, state=(INDEX,),
          writes=()),
    Timer("index_sync", "sessions", lambda settings: 1.0, upkeep.keep_index_whole, state=(SESSIONS, INDEX),
          writes=()),
    # Twice per heartbeat interval, so that a missed heartbeat is noticed within half an interval.
    Timer("heartbeat_checks", "sessions", lambda settings: max(0.2, settings.heartbeat_interval_s / 2),
          upkeep.check_heartbeats, state=(SESSIONS,), writes=(DRIVER_COMMANDS,)),
    Timer("decisions_expiry", "assignments", lambda settings: 1.0, retention.sweep_decisions,
          state=(DECISIONS, RESERVATIONS), writes=()),
    # The feed's shares of each kind, from the process with their role: at most once a second each.
    Timer("supply_feed", "sessions", lambda settings: supply_demand.EMIT_EVERY_S, feed.write_supply,
          state=(SUPPLY_COUNTS,), writes=(SUPPLY_DEMAND,)),
    Timer("demand_feed", "assignments", lambda settings: supply_demand.EMIT_EVERY_S, feed.write_demand,
          state=(DEMAND_WINDOW,), writes=(SUPPLY_DEMAND,)),
)


@dataclass(frozen=True)
class Readers:
    """The process's readers of their own, which the app starts and stops with its partitions (None
    without their role): each reads its inputs through one consumer."""

    pings: pings.PingBatches | None = None
    requests: requests.RequestBatches | None = None


def wire(app: DispatchApp, settings: Settings, names: TopicNames) -> Readers:
    """Registers the agents, readers and timers of the process's roles on the app."""
    readers: dict[str, Any] = {}
    for source in INPUTS:
        if source.role not in settings.roles:
            continue
        topics = source.reads(names, settings.regions)
        if source.reader == PING_BATCHES:
            assert source.recover is not None, source.name
            readers["pings"] = pings.PingBatches(app, topics, source.handler, source.recover)
        elif source.reader == REQUEST_BATCHES:
            # Subscribed, so that the group assigns their partitions, and read by the reader alone.
            app.topics.add(raw_topic(app, *topics))
            app.read_elsewhere |= set(topics)
            readers["requests"] = requests.RequestBatches(app, topics, source.handler)
        else:
            app.agent(raw_topic(app, *topics), name=source.name)(_agent(app, source.handler))
    for timer in TIMERS:
        if timer.role in settings.roles:
            app.timer(interval=timer.every_s(settings), name=timer.name)(timer.handler)
    return Readers(**readers)


def _agent(app: DispatchApp, handler: Callable[..., Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    async def agent(stream: Any) -> None:
        await handler(app.runtime, stream)

    return agent


def describe() -> list[dict[str, str]]:
    """The tables as rows for people: `geodispatch topology`, and the README's topic table points here."""
    rows = [
        {"reads": source.topics, "by": f"{source.reader} {source.name}", "role": source.role,
         "handler": _handlers(source),
         "state": "; ".join(source.state), "writes": ", ".join(source.writes) or "-"}
        for source in INPUTS
    ]
    rows += [
        {"reads": "-", "by": f"timer {timer.name}", "role": timer.role, "handler": _qualified(timer.handler),
         "state": "; ".join(timer.state), "writes": ", ".join(timer.writes) or "-"}
        for timer in TIMERS
    ]
    return rows


def _handlers(source: Input) -> str:
    if source.recover is None:
        return _qualified(source.handler)
    return f"{_qualified(source.handler)}; on assignment {_qualified(source.recover)}"


def _qualified(handler: Callable[..., Any]) -> str:
    return f"{handler.__module__}.{handler.__qualname__}"
