"""Timers that keep the shared index whole and drivers' liveness current: flush pending index
writes, rebuild this worker's part of the index after a rebalance or when Redis lost it, and ask
the sessions agent to check drivers whose heartbeat is overdue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from schemas.models import DriverCommand
from streams.index import now_ms
from streams.logic.sessions import heartbeat_checks_due

if TYPE_CHECKING:
    from streams.app import DispatchApp

log = structlog.get_logger(__name__)


async def flush_index(app: DispatchApp) -> None:
    runtime = app.runtime
    writer = runtime.index_writer
    try:
        await writer.flush(runtime.fence.token)
    except (RedisError, OSError) as exc:
        if writer.failures in (1, 10) or writer.failures % 100 == 0:
            log.error("index_write_failed", error=str(exc), pending=writer.pending, failures=writer.failures)
        runtime.metrics.retries.labels(stage="index_write").inc()


async def keep_index_whole(app: DispatchApp) -> None:
    try:
        await app.runtime.index_writer.sync(app)
    except (RedisError, OSError) as exc:
        log.error("index_rebuild_failed", error=str(exc))


async def check_heartbeats(app: DispatchApp) -> None:
    runtime = app.runtime
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
    if not runtime.pings.ready:
        # Sessions without the positions and times still to be read back from the ping log look silent.
        return
    ts = datetime.now(UTC)
    sent = runtime.progress.heartbeat_checks
    for driver_id in heartbeat_checks_due(sessions, now, runtime.rules, sent):
        command = DriverCommand(driver_id=driver_id, kind="heartbeat_check", ts=ts)
        await runtime.topics.driver_commands.send(key=driver_id.encode(), value=runtime.codec.encode(command))
        sent[driver_id] = now
