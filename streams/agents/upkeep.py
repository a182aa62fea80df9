"""Timers that keep the shared index whole and drivers' liveness current: flush pending index
writes, rebuild this worker's part of the index after a rebalance or when Redis lost it, and ask
the sessions agent to check drivers whose heartbeat is overdue."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from faust.types import TP
from redis.exceptions import RedisError

from schemas.models import DriverCommand
from streams.app import app
from streams.index import now_ms
from streams.logic.sessions import heartbeat_checks_due
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
    await sync_index(app.runtime)


async def sync_index(runtime: Runtime) -> None:
    """Rebuilds from the table when this worker's partitions changed or the index's epoch did
    (Redis emptied or replaced, or `geodispatch index rebuild`). A partition that is not ready (Redis
    was emptied) is rebuilt and marked ready only once this worker has applied every driver command
    sent to it before the loss was noticed: a lost reservation comes back from the session's trip,
    and the session hears of the trip through such a command."""
    if _between_assignments():
        return
    # What this rebuild is for. A rebalance can begin while it waits for Redis (faust starts one from
    # its consumer thread): it then must neither load sessions from a table not yet restored, nor
    # count as the rebuild of that rebalance (a zombie fault run lost a trip to exactly that).
    rebalance, token = app.rebalancing_count, runtime.fence.token
    writer = runtime.index_writer
    commands = runtime.names.driver_commands
    partitions = {tp.partition for tp in app.consumer.assignment() if tp.topic == commands}
    try:
        epoch = await runtime.index.current_epoch()
        unready = await runtime.index.unready(partitions)
        writer.unready = set(unready)
        if not unready and epoch == writer.epoch and rebalance == writer.rebalance:
            return
        if unready and not await _commands_applied(runtime, commands, unready):
            return
        if _between_assignments() or app.rebalancing_count != rebalance:
            return
        sessions = list(runtime.sessions.load_all())
        for start in range(0, len(sessions), REBUILD_CHUNK):
            chunk = sessions[start : start + REBUILD_CHUNK]
            await runtime.index.write_sessions(chunk, token, rebuild=True)
        await runtime.index.mark_ready(unready, epoch)
        writer.unready = set()
    except (RedisError, OSError) as exc:
        log.error("index_rebuild_failed", error=str(exc))
        return
    writer.catch_up = None
    writer.epoch, writer.rebalance = epoch, rebalance
    log.info("index_rebuilt", drivers=len(sessions), epoch=epoch, rebalance=rebalance, readied=unready)


def _between_assignments() -> bool:
    """Whether this worker is rebalancing, restoring its tables, or without partitions."""
    return app.rebalancing or app.in_recovery or not app.consumer.assignment()


async def _commands_applied(runtime: Runtime, topic: str, partitions: list[int]) -> bool:
    """Whether this worker has applied the driver commands of these partitions up to their end
    offsets as measured when it first found them not ready."""
    writer = runtime.index_writer
    if writer.catch_up is None or set(writer.catch_up) != set(partitions):
        ends = await app.consumer.highwaters(*(TP(topic, p) for p in partitions))
        writer.catch_up = {tp.partition: offset for tp, offset in ends.items()}
        log.info("index_partitions_not_ready", partitions=partitions, apply_commands_up_to=writer.catch_up)
    # The next offset faust would commit: everything before it is applied, even when this worker has
    # applied no command of its own since it was assigned the partition.
    committed = app.consumer._committed_offset
    return all(
        max(runtime.commands_applied.get(p, 0), committed.get(TP(topic, p)) or 0) >= end
        for p, end in writer.catch_up.items()
    )


@app.timer(interval=max(0.2, app.runtime.settings.heartbeat_interval_s / 2), name="heartbeat_checks")
async def check_heartbeats() -> None:
    runtime: Runtime = app.runtime
    now = now_ms()
    online: dict[str, int] = {}
    available: dict[str, int] = {}
    sessions = list(runtime.sessions.cache.values())
    for session in sessions:
        region = session.region or "unknown"
        if session.online:
            online[region] = online.get(region, 0) + 1
            if session.assignable:
                available[region] = available.get(region, 0) + 1
    for region in set(online) | set(runtime.stats.get("regions", ())):
        runtime.metrics.drivers_online.labels(region=region).set(online.get(region, 0))
        runtime.metrics.drivers_available.labels(region=region).set(available.get(region, 0))
    runtime.stats["regions"] = set(online)
    runtime.stats["drivers_online"] = sum(online.values())
    runtime.stats["drivers_available"] = sum(available.values())
    ts = datetime.now(UTC)
    for driver_id in heartbeat_checks_due(sessions, now, runtime.rules, runtime.heartbeat_checks):
        command = DriverCommand(driver_id=driver_id, kind="heartbeat_check", ts=ts)
        await runtime.topics.driver_commands.send(key=driver_id.encode(), value=runtime.codec.encode(command))
        runtime.heartbeat_checks[driver_id] = now


@app.on_partitions_assigned.connect
async def advance_fence(sender, assigned, **kwargs) -> None:
    """A new assignment makes this worker the newest owner of its partitions: before any of their
    records is processed, its writes get a token newer than any earlier owner's."""
    token = app.runtime.fence.advance(now_ms())
    log.info("fence_advanced", token=token, partitions=len(assigned))


@app.on_rebalance_complete.connect
async def forget_unrestored(sender, **kwargs) -> None:
    """Sessions read while the tables were restored (an HTTP request, a rebuild that began before the
    rebalance) came from a store that did not yet hold the restored changelog: drop them before the
    agents resume. Dropping is always safe: every write goes to the table as well as the cache. Then
    pings are read again, for the partitions this worker has now."""
    runtime: Runtime = app.runtime
    runtime.sessions.forget_all()
    commands = runtime.names.driver_commands
    await runtime.pings.start({tp.partition for tp in app.consumer.assignment() if tp.topic == commands})


@app.on_partitions_revoked.connect
async def forget_revoked(sender, revoked, **kwargs) -> None:
    """A partition given up may change elsewhere before it comes back: never trust its cache, nor
    flush its index writes. Its drivers' heartbeat checks are now the new owner's to send. Pings stop
    first, so that none is applied to what is forgotten."""
    await app.runtime.pings.stop()
    app.runtime.sessions.forget_all()
    app.runtime.index_writer.forget_all()
    app.runtime.heartbeat_checks.clear()
    app.runtime.commands_applied.clear()
