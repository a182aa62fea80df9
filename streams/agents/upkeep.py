"""Timers that keep the shared index whole and drivers' liveness current: flush pending index
writes, rebuild this worker's part of the index after a rebalance or when Redis lost it, and ask
the sessions agent to check drivers whose heartbeat is overdue."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from schemas.models import DriverCommand
from streams.index import now_ms
from streams.logic.sessions import HEARTBEAT_SWEEP, heartbeat_due, sweeps_due
from streams.routing import key_partition, partition_key

if TYPE_CHECKING:
    from streams.app import DispatchApp

log = structlog.get_logger(__name__)
# Sessions looked at between two yields to the event loop: 100,000 of them take a while.
SCAN_BLOCK = 5000


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
    """Counts drivers online and available, finds those whose heartbeat is overdue, and sends a sweep
    to each partition that has some: its owner checks them (streams.agents.sessions), in the order of
    the partition's other records, whoever sent the sweep. A worker that lost the partition without
    noticing (paused) can then not time out a driver who pings its new owner."""
    runtime = app.runtime
    now, rules, partitions = now_ms(), runtime.rules, runtime.settings.partitions
    online: Counter[str] = Counter()
    available: Counter[str] = Counter()
    overdue: dict[int, set[str]] = {}
    sessions = list(runtime.sessions.cache.values())
    for start in range(0, len(sessions), SCAN_BLOCK):
        for session in sessions[start : start + SCAN_BLOCK]:
            if not session.online:
                continue
            region = session.region or "unknown"
            online[region] += 1
            if session.assignable:
                available[region] += 1
            if heartbeat_due(session, now, rules):
                overdue.setdefault(key_partition(session.driver_id.encode(), partitions), set()).add(session.driver_id)
        await asyncio.sleep(0)
    for region in set(online) | set(runtime.stats.get("regions", ())):
        runtime.metrics.drivers_online.labels(region=region).set(online.get(region, 0))
        runtime.metrics.drivers_available.labels(region=region).set(available.get(region, 0))
    runtime.stats["regions"] = set(online)
    runtime.stats["drivers_online"] = sum(online.values())
    runtime.stats["drivers_available"] = sum(available.values())
    if not runtime.pings.ready:
        # Sessions without the positions and times still to be read back from the ping log look silent.
        return
    progress = runtime.progress
    progress.heartbeats_overdue = overdue
    ts = datetime.now(UTC)
    for partition in sweeps_due(overdue, now, rules, progress.sweeps_sent):
        key = partition_key(HEARTBEAT_SWEEP, partition, partitions)
        command = DriverCommand(driver_id=key, kind=HEARTBEAT_SWEEP, ts=ts)
        await runtime.topics.driver_commands.send(key=key.encode(), value=runtime.codec.encode(command),
                                                  partition=partition)
        progress.sweeps_sent[partition] = now
