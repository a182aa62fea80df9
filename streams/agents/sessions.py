"""Driver sessions: pings, status changes, trip events and commands applied to each driver's session,
the shared index, presence changes and rider tracking."""

from __future__ import annotations

import functools

import structlog

from schemas.codec import InvalidMessage
from schemas.models import DriverCommand, DriverStatus, LocationPing, TripEvent
from streams.dlq import process_each, timestamp_ms
from streams.index import now_ms
from streams.logic import InvalidEvent
from streams.logic.sessions import (
    HEARTBEAT_TIMEOUT,
    Effects,
    apply_assignment,
    apply_ping,
    apply_status,
    apply_trip,
    check_heartbeat,
)
from streams.routing import REROUTED_FROM, misrouted
from streams.runtime import Runtime
from streams.topics import send_confirmed

log = structlog.get_logger(__name__)


def _classify(runtime: Runtime, topic: str) -> tuple[str, str | None]:
    names = runtime.names
    if topic == names.status:
        return "status", None
    if topic == names.trip_events:
        return "trip", None
    if topic == names.driver_commands:
        return "command", None
    return "location", topic.rsplit(".", 1)[-1]


async def _reroute(runtime: Runtime, message, driver_key: bytes, partition: int) -> None:
    headers = [*(message.headers or ()), (REROUTED_FROM, f"{message.partition}@{message.offset}".encode())]
    # The original's timestamp kept: a dead letter of the copy then names when the record was sent.
    await send_confirmed(runtime.topics.named(message.topic), key=driver_key, value=message.value,
                         partition=partition, headers=headers, timestamp=timestamp_ms(message) / 1000)
    runtime.metrics.rerouted.labels(stream="sessions").inc()


def _apply(runtime: Runtime, kind: str, region: str | None, record, now: int) -> Effects:
    session = runtime.sessions.get(_driver_id(record))
    if kind == "location":
        return apply_ping(session, record, region, now, runtime.rules)
    if kind == "status":
        return apply_status(session, record, now, runtime.rules)
    if kind == "trip":
        return apply_trip(session, record)
    if record.kind == "assign":
        return apply_assignment(session, record.driver_id, record.order_id)
    runtime.progress.heartbeat_checks.pop(record.driver_id, None)
    return check_heartbeat(session, now, runtime.rules) if session else Effects("unknown")


MODELS = {"location": LocationPing, "status": DriverStatus, "trip": TripEvent, "command": DriverCommand}


def _driver_id(record) -> str:
    return record.driverId if isinstance(record, TripEvent) else record.driver_id


def _count(runtime: Runtime, kind: str, effects: Effects, record, now: int) -> None:
    m = runtime.metrics
    if kind == "location":
        m.child(m.pings, effects.outcome).inc()
        m.child(m.event_lag, "locations").observe(max(0.0, now / 1000 - record.ts.timestamp()))
        if effects.session is not None and effects.session.trip_id is not None:
            m.child(m.tracking_updates, "sent" if effects.tracking else "throttled").inc()
    elif kind == "status":
        m.status_changes.labels(change=effects.outcome).inc()
    elif kind == "trip":
        m.trip_events.labels(status=effects.outcome).inc()
    elif effects.outcome == HEARTBEAT_TIMEOUT:
        m.heartbeat_timeouts.inc()
    if effects.presence is not None:
        m.presence_changes.labels(reason=effects.presence.reason, online=str(effects.presence.online).lower()).inc()


async def process(runtime: Runtime, message) -> None:
    kind, region = _classify(runtime, message.topic)
    try:
        await _process(runtime, message, kind, region)
    except (InvalidMessage, InvalidEvent) as exc:
        # Dead-lettered by the caller; counted here too so ping outcomes add up, by the field at
        # fault (a bounded label: the message's own field names).
        if kind == "location":
            runtime.metrics.pings.labels(outcome=f"invalid_{exc.field or 'value'}").inc()
        raise
    finally:
        if kind == "command":  # applied, or dead-lettered by the caller: either way done with
            runtime.progress.commands_applied[message.partition] = message.offset + 1


async def _process(runtime: Runtime, message, kind: str, region: str | None) -> None:
    record = runtime.codec.decode(MODELS[kind], message.value)
    driver_id = _driver_id(record)
    driver_key = driver_id.encode()
    if message.key is not None and message.key != driver_key:
        raise InvalidMessage(f"record key {message.key[:64]!r} is not the record's driver id", "key")
    target = misrouted(driver_key, message.partition, runtime.settings.partitions)
    if target is not None:
        await _reroute(runtime, message, driver_key, target)
        return
    now = now_ms()
    effects = _apply(runtime, kind, region, record, now)
    _count(runtime, kind, effects, record, now)
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

