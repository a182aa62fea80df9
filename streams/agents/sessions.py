"""Driver sessions: pings, status changes, trip events and commands applied to each driver's session,
the shared index, presence changes and rider tracking."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog

from schemas.codec import InvalidMessage
from schemas.models import DriverCommand, DriverStatus, LocationPing, TripEvent
from streams.agents.pings import YIELD_EVERY
from streams.dlq import give_up, process_each
from streams.index import now_ms
from streams.logic import InvalidEvent
from streams.logic.sessions import (
    HEARTBEAT_SWEEP,
    HEARTBEAT_TIMEOUT,
    DriverSession,
    Effects,
    apply_assignment,
    apply_ping,
    apply_status,
    apply_trip,
    check_heartbeat,
    moved_only,
)
from streams.routing import misrouted, reroute
from streams.runtime import Runtime

log = structlog.get_logger(__name__)


def _classify(runtime: Runtime, topic: str) -> str:
    """The kind of a driver_sessions agent's record (pings come in batches, to `process_pings`)."""
    names = runtime.names
    if topic == names.status:
        return "status"
    if topic == names.trip_events:
        return "trip"
    return "command"


def _region_of(topic: str) -> str:
    """The region key of a regional topic: its name's last part (`driver_locations.4_-7`)."""
    return topic.rsplit(".", 1)[-1]


class _Regions(dict[str, str]):
    """Region keys by topic, each worked out once."""

    def __missing__(self, topic: str) -> str:
        region = self[topic] = _region_of(topic)
        return region


def _placement(message: Any, driver_id: str, partitions: int) -> tuple[bytes, int | None]:
    """The record's driver key, and the partition it belongs on when it is not on it (it is moved
    there, streams.routing); a record keyed by another id than its driver's is invalid."""
    driver_key = driver_id.encode()
    if message.key is not None and message.key != driver_key:
        raise InvalidMessage(f"record key {message.key[:64]!r} is not the record's driver id", "key")
    return driver_key, misrouted(driver_key, message.partition, partitions)


def _apply(runtime: Runtime, kind: str, record, now: int) -> Effects:
    session = runtime.sessions.get(_driver_id(record))
    if kind == "status":
        return apply_status(session, record, now, runtime.rules)
    if kind == "trip":
        return apply_trip(session, record)
    if record.kind == "assign":
        return apply_assignment(session, record.driver_id, record.order_id)
    return check_heartbeat(session, now, runtime.rules) if session else Effects("unknown")


MODELS = {"status": DriverStatus, "trip": TripEvent, "command": DriverCommand}


def _driver_id(record) -> str:
    return record.driverId if isinstance(record, TripEvent) else record.driver_id


def _count(runtime: Runtime, kind: str, effects: Effects) -> None:
    m = runtime.metrics
    if kind == "status":
        m.status_changes.labels(change=effects.outcome).inc()
    elif kind == "trip":
        m.trip_events.labels(status=effects.outcome).inc()
    elif effects.outcome == HEARTBEAT_TIMEOUT:
        m.heartbeat_timeouts.inc()
    if effects.presence is not None:
        m.presence_changes.labels(reason=effects.presence.reason, online=str(effects.presence.online).lower()).inc()


async def process(runtime: Runtime, message) -> None:
    """One status change, trip event or driver command."""
    kind = _classify(runtime, message.topic)
    try:
        await _process(runtime, message, kind)
    finally:
        if kind == "command":  # applied, or dead-lettered by the caller: either way done with
            runtime.progress.commands_applied[message.partition] = message.offset + 1


async def _process(runtime: Runtime, message, kind: str) -> None:
    await runtime.codec.prefetch((message.value,))
    record = runtime.codec.decode(MODELS[kind], message.value)
    driver_key, target = _placement(message, _driver_id(record), runtime.settings.partitions)
    if target is not None:
        await reroute(runtime, message, driver_key, target, "sessions")
        return
    if kind == "command" and record.kind == HEARTBEAT_SWEEP:
        await _sweep_heartbeats(runtime, message.partition)
        return
    now = now_ms()
    effects = _apply(runtime, kind, record, now)
    _count(runtime, kind, effects)
    if effects.session is not None:
        await runtime.sessions.put(effects.session, message.partition)
        runtime.index_writer.stage(effects.session)
    codec = runtime.codec
    if effects.presence is not None:
        await runtime.topics.presence.send(key=driver_key, value=codec.encode(effects.presence))
    if effects.tracking is not None:
        await runtime.topics.tracking.send(
            key=effects.tracking.booking_id.encode(), value=codec.encode(effects.tracking)
        )


async def driver_sessions(runtime: Runtime, stream) -> None:
    """The agent of the status, trip-event and driver-command topics (pings come through
    streams.agents.pings, to the same `process`)."""
    await process_each(stream, runtime.dead_letters, "sessions", functools.partial(process, runtime))



@dataclass
class BlockEffects:
    """What a block of pings or heartbeat checks produced, gathered while it is applied and written
    once it all is (`_write_block`)."""

    # Each driver's last version: staged for the index.
    sessions: dict[str, DriverSession] = field(default_factory=dict)
    # The drivers with a change besides their position: written to the index whole.
    whole: set[str] = field(default_factory=set)
    # The drivers whose change the ping log cannot give back after a restart (a ping that brought a
    # timed-out driver back online), with the partition of their records: written to the table.
    persist: dict[str, int] = field(default_factory=dict)
    presence: list[tuple[bytes, Any]] = field(default_factory=list)
    tracking: list[Any] = field(default_factory=list)
    # (record, driver key, the partition it belongs on)
    reroutes: list[tuple[Any, bytes, int]] = field(default_factory=list)
    failures: list[tuple[Any, Exception]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # of pings
    heartbeat_timeouts: int = 0
    tracking_updates: Counter[str] = field(default_factory=Counter)
    presence_changes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def announce(self, driver_key: bytes, presence: Any) -> None:
        self.presence.append((driver_key, presence))
        self.presence_changes[(presence.reason, str(presence.online).lower())] += 1


async def process_pings(runtime: Runtime, records: list[Any]) -> None:
    """A fetched batch of pings as one block: decoded and applied to the sessions in one plain loop,
    then written once: each driver's last version staged for the index, presence and tracking sent,
    outcomes counted. Position needs no changelog record: the ping log itself gives it back after a
    rebalance (`recover_positions`); only a change it cannot give back goes to the table, once per
    driver per block. A record that fails is dead-lettered alone with its reason,
    and the others are applied as if it were not there. A failure to write (the producer refusing)
    stops the ping reader, which then commits nothing of the batch: it is read and applied again."""
    await runtime.codec.prefetch(message.value for message in records)  # registry ids: no I/O in the loop
    effects = _apply_pings(runtime, records)
    await _write_block(runtime, effects)


def _apply_pings(runtime: Runtime, records: list[Any]) -> BlockEffects:
    codec, rules, sessions = runtime.codec, runtime.rules, runtime.sessions
    partitions = runtime.settings.partitions
    lag = runtime.metrics.child(runtime.metrics.event_lag, "locations")
    out = BlockEffects()
    regions = _Regions()
    now = now_ms()
    for message in records:
        try:
            ping = codec.decode(LocationPing, message.value)
            driver_key, target = _placement(message, ping.driver_id, partitions)
            if target is not None:
                out.reroutes.append((message, driver_key, target))
                continue
            before = sessions.get(ping.driver_id)
            applied = apply_ping(before, ping, regions[message.topic], now, rules)
        except Exception as exc:  # dead-lettered with the batch's effects (give_up logs the unexpected)
            if isinstance(exc, InvalidMessage | InvalidEvent):
                # Counted here too so that ping outcomes add up, by the field at fault.
                out.outcomes[f"invalid_{exc.field or 'value'}"] += 1
            out.failures.append((message, exc))
            continue
        out.outcomes[applied.outcome] += 1
        lag.observe(max(0.0, now / 1000 - ping.ts.timestamp()))
        session = applied.session
        if session is not None:
            sessions.remember(session)
            out.sessions[ping.driver_id] = session
            if not moved_only(before, session):
                out.whole.add(ping.driver_id)
            if session.trip_id is not None:
                out.tracking_updates["sent" if applied.tracking else "throttled"] += 1
        if applied.presence is not None:
            # Back online after a timeout: read back from the log alone, the ping would find the
            # driver offline and, by then older than a heartbeat, leave it so.
            out.persist[ping.driver_id] = message.partition
            out.announce(driver_key, applied.presence)
        if applied.tracking is not None:
            out.tracking.append(applied.tracking)
    return out


async def _write_block(runtime: Runtime, out: BlockEffects) -> None:
    await runtime.sessions.write_all((out.sessions[driver], partition) for driver, partition in out.persist.items())
    for driver_id, session in out.sessions.items():
        runtime.index_writer.stage(session, moved_only=driver_id not in out.whole)
    codec, topics = runtime.codec, runtime.topics
    for driver_key, presence in out.presence:
        await topics.presence.send(key=driver_key, value=codec.encode(presence))
    for tracking in out.tracking:
        await topics.tracking.send(key=tracking.booking_id.encode(), value=codec.encode(tracking))
    for message, driver_key, target in out.reroutes:
        await reroute(runtime, message, driver_key, target, "sessions")
    for message, exc in out.failures:
        await give_up(runtime.dead_letters, message, "sessions", exc)
    m = runtime.metrics
    for outcome, count in out.outcomes.items():
        m.child(m.pings, outcome).inc(count)
    if out.heartbeat_timeouts:
        m.heartbeat_timeouts.inc(out.heartbeat_timeouts)
    for state, count in out.tracking_updates.items():
        m.child(m.tracking_updates, state).inc(count)
    for (reason, online), count in out.presence_changes.items():
        m.presence_changes.labels(reason=reason, online=online).inc(count)


async def _sweep_heartbeats(runtime: Runtime, partition: int) -> None:
    """Checks this worker's overdue drivers of `partition` as its last heartbeat check found them, each
    again now (a ping may have come since), a block at a time with pings applied in between: each
    timeout written to the table and the index, its presence change sent."""
    progress, sessions, rules = runtime.progress, runtime.sessions, runtime.rules
    progress.sweeps_sent.pop(partition, None)
    drivers = sorted(progress.heartbeats_overdue.pop(partition, ()))
    for start in range(0, len(drivers), YIELD_EVERY):
        out, now = BlockEffects(), now_ms()
        for driver_id in drivers[start : start + YIELD_EVERY]:
            session = sessions.get(driver_id)
            effects = check_heartbeat(session, now, rules) if session is not None else Effects("unknown")
            if effects.session is None or effects.presence is None:
                continue
            sessions.remember(effects.session)
            out.sessions[driver_id] = effects.session
            out.whole.add(driver_id)
            out.persist[driver_id] = partition
            out.announce(driver_id.encode(), effects.presence)
            out.heartbeat_timeouts += 1
        await _write_block(runtime, out)
        await asyncio.sleep(0)


def recover_positions(runtime: Runtime, records: list[Any]) -> int:
    """Pings read back from the log when partitions are assigned (streams.agents.pings), applied to the
    sessions restored from the table: the positions, times and tracking clocks no changelog record
    holds. Nothing is sent or counted: what they produced was produced when they were first read. A
    record that fails, or belongs on another partition, is passed over, as it was dead-lettered or
    moved then. Returns how many were passed over."""
    codec, rules, sessions = runtime.codec, runtime.rules, runtime.sessions
    partitions = runtime.settings.partitions
    regions = _Regions()
    now = now_ms()
    passed_over = 0
    for message in records:
        try:
            ping = codec.decode(LocationPing, message.value)
            if _placement(message, ping.driver_id, partitions)[1] is not None:
                continue
            applied = apply_ping(sessions.get(ping.driver_id), ping, regions[message.topic], now, rules)
        except Exception:  # counted, and logged once per recovery by the reader
            passed_over += 1
            continue
        if applied.session is not None:
            sessions.remember(applied.session)
    return passed_over
