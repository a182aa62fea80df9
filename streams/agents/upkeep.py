"""Timers that keep the shared index whole and drivers' liveness current: flush pending index
writes, rebuild this worker's part of the index after a rebalance or when Redis lost it, and ask
the sessions agent to check drivers whose heartbeat is overdue."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from redis.exceptions import RedisError

from schemas.models import DriverCommand
from streams.app import app
from streams.index import now_ms
from streams.logic.sessions import heartbeat_due
from streams.runtime import Runtime

log = structlog.get_logger(__name__)
REBUILD_CHUNK = 2000
INDEX_FLUSH_INTERVAL_S = 0.01


@app.timer(interval=INDEX_FLUSH_INTERVAL_S, name="index_flush")
async def flush_index() -> None:
    runtime: Runtime = app.runtime
    try:
        await runtime.index_writer.flush(runtime.fence.token)
    except (RedisError, OSError) as exc:
        if runtime.index_writer.failures in (1, 10) or runtime.index_writer.failures % 100 == 0:
            log.error("index_write_failed", error=str(exc), pending=runtime.index_writer.pending,
                      failures=runtime.index_writer.failures)
        runtime.metrics.retries.labels(stage="index_write").inc()


@app.timer(interval=1.0, name="index_sync")
async def keep_index_whole() -> None:
    """Rebuilds from the table when this worker's partitions changed or the index's epoch did
    (Redis emptied or replaced, or `geodispatch index rebuild`)."""
    runtime: Runtime = app.runtime
    if app.rebalancing or app.in_recovery or not app.consumer.assignment():
        return
    writer = runtime.index_writer
    try:
        epoch = await runtime.index.current_epoch()
        if epoch == writer.epoch and app.rebalancing_count == writer.rebalance:
            return
        sessions = list(runtime.sessions.load_all())
        for start in range(0, len(sessions), REBUILD_CHUNK):
            chunk = sessions[start : start + REBUILD_CHUNK]
            await runtime.index.write_sessions(chunk, runtime.fence.token, rebuild=True)
    except (RedisError, OSError) as exc:
        log.error("index_rebuild_failed", error=str(exc))
        return
    writer.epoch, writer.rebalance = epoch, app.rebalancing_count
    log.info("index_rebuilt", drivers=len(sessions), epoch=epoch, rebalance=app.rebalancing_count)


@app.timer(interval=max(0.2, app.runtime.settings.heartbeat_interval_s / 2), name="heartbeat_checks")
async def check_heartbeats() -> None:
    runtime: Runtime = app.runtime
    now = now_ms()
    online: dict[str, int] = {}
    available: dict[str, int] = {}
    due = []
    for session in list(runtime.sessions.cache.values()):
        region = session.region or "unknown"
        if session.online:
            online[region] = online.get(region, 0) + 1
            if session.assignable:
                available[region] = available.get(region, 0) + 1
        if heartbeat_due(session, now, runtime.rules):
            due.append(session.driver_id)
    for region in set(online) | set(runtime.stats.get("regions", ())):
        runtime.metrics.drivers_online.labels(region=region).set(online.get(region, 0))
        runtime.metrics.drivers_available.labels(region=region).set(available.get(region, 0))
    runtime.stats["regions"] = set(online)
    runtime.stats["drivers_online"] = sum(online.values())
    runtime.stats["drivers_available"] = sum(available.values())
    ts = datetime.now(UTC)
    for driver_id in due:
        command = DriverCommand(driver_id=driver_id, kind="heartbeat_check", ts=ts)
        await runtime.topics.driver_commands.send(key=driver_id.encode(), value=runtime.codec.encode(command))


@app.on_partitions_assigned.connect
async def advance_fence(sender, assigned, **kwargs) -> None:
    """A new assignment makes this worker the newest owner of its partitions: before any of their
    records is processed, its writes get a token newer than any earlier owner's."""
    token = app.runtime.fence.advance(now_ms())
    log.info("fence_advanced", token=token, partitions=len(assigned))


@app.on_partitions_revoked.connect
async def forget_revoked(sender, revoked, **kwargs) -> None:
    """A partition given up may change elsewhere before it comes back: never trust its cache."""
    app.runtime.sessions.forget_all()
