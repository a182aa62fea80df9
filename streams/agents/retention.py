"""Decisions kept for their retention and no longer: a timer sweeps the expired ones out of the
decisions table (Redis expires its copies itself, streams/lua/record_decisions.lua)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from streams.index import now_ms
from streams.logic import assignment as decide

if TYPE_CHECKING:
    from streams.app import DispatchApp

log = structlog.get_logger(__name__)
# Entries read per sweep: a decision outlives its retention by at most one pass over this worker's
# table, (its entries / SWEEP_ENTRIES) seconds, for a steady and small cost per second.
SWEEP_ENTRIES = 5000


async def sweep_decisions(app: DispatchApp) -> None:
    runtime = app.runtime
    settings, now = runtime.settings, now_ms()
    failed_ttl_ms, retention_ms = settings.failed_decision_ttl_s * 1000, settings.decision_retention_s * 1000
    expired = runtime.decisions.expired(lambda d: decide.reusable(d, now, failed_ttl_ms, retention_ms),
                                        SWEEP_ENTRIES)
    for key, partition in expired:
        await runtime.decisions.delete(key, partition)
    if expired:
        runtime.metrics.decisions_expired.inc(len(expired))
        # Their copies in Redis expire by themselves, but for those written before decisions had a
        # retention (0.1.0), which only this sweep can find.
        try:
            legacy = await runtime.index.forget_unexpiring_decisions([key.decode() for key, _ in expired])
        except (RedisError, OSError) as exc:
            # Left for Redis's keyspace to hold: the next sweep pass finds none of them again, so say so.
            legacy = 0
            runtime.metrics.decisions_expiry_failures.inc()
            log.error("decisions_expiry_redis_failed", error=repr(exc), orders=len(expired))
        log.info("decisions_expired", count=len(expired), unexpiring_in_redis=legacy)
