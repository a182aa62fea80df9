"""The HTTP API's answers, apart from any web framework: the worker's faust views (streams.views) and
the API processes (streams.api) give the same. The sessions API answers from the shared Redis index
alone, so any process that reaches Redis can serve it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import asdict
from typing import Any

import h3
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumers.supply_demand import FeedFollower, add_up, grand_total
from streams.index import RegionIndex, now_ms
from streams.logic.queries import BadQuery, parse_nearby, parse_supply_demand
from streams.metrics import Metrics

log = structlog.get_logger(__name__)
PREFIX = "/driver-sessions/sessions"
SUPPLY_DEMAND_PATH = "/dispatch/supply-demand"
# aiohttp refuses a charset inside content_type; the Prometheus text format is UTF-8 anyway.
METRICS_CONTENT_TYPE = "; ".join(p for p in CONTENT_TYPE_LATEST.split("; ") if not p.startswith("charset="))

Answer = tuple[dict[str, Any], int]  # a JSON body and its status


async def timed(metrics: Metrics, route: str, answering: Awaitable[Answer]) -> Answer:
    """Counts and times an answer; turns an unexpected error into a JSON 500."""
    started = time.perf_counter()
    try:
        body, status = await answering
    except Exception as exc:  # answered, logged and counted: never a bare text 500
        log.exception("http_error", route=route)
        body, status = {"error": "internal error", "detail": type(exc).__name__}, 500
    metrics.http_requests.labels(route=route, status=str(status)).inc()
    metrics.http_seconds.labels(route=route).observe(time.perf_counter() - started)
    return body, status


async def nearby_answer(index: RegionIndex, location_max_age_s: float, query: Mapping[str, str]) -> Answer:
    try:
        nearby = parse_nearby(query)
    except BadQuery as exc:
        return {"error": exc.reason, "parameter": exc.parameter}, 400
    fresh_since = now_ms() - int(location_max_age_s * 1000)
    drivers, cells = await index.nearby(nearby.h3, nearby.k, nearby.limit, fresh_since)
    return {"drivers": drivers, "queried_cells": cells}, 200


async def supply_demand_answer(feed: FeedFollower, resolution: int, window_s: int,
                               query: Mapping[str, str]) -> Answer:
    """The feed's shares added up per cell of the k-ring around `h3` (at the feed's resolution), and
    over all of them: `{"h3", "k", "resolution", "window_s", "cells": {cell: counts}, "totals"}`."""
    try:
        asked = parse_supply_demand(query, resolution)
    except BadQuery as exc:
        return {"error": exc.reason, "parameter": exc.parameter}, 400
    try:
        shares = await feed.current()
    except Exception as exc:  # the topic unreadable: logged by the follower, answered as such
        return {"error": "the supply/demand feed cannot be read", "detail": feed.failure or type(exc).__name__}, 503
    cells = h3.grid_disk(asked.h3, asked.k)
    per_cell = add_up(shares.latest.values(), cells)
    return {
        "h3": asked.h3, "k": asked.k, "resolution": resolution, "window_s": window_s,
        "cells": {cell: asdict(totals) for cell, totals in sorted(per_cell.items())},
        "totals": asdict(grand_total(per_cell)),
    }, 200


async def session_answer(index: RegionIndex, driver_id: str) -> Answer:
    response = await index.session_response(driver_id)
    if response is None:
        return {"error": f"no session for driver {driver_id!r}", "driver_id": driver_id}, 404
    return response, 200


async def health_answer(checks: dict[str, Awaitable[str]], passed: str = "healthy",
                        failed: str = "unhealthy") -> Answer:
    """Healthy when every check says "connected" (or "ready", the word of a check of the process's own
    state); each check's word in the body. `passed` and `failed` name the status (the readiness probe
    says "ready" or "not_ready")."""
    states = {name: await check for name, check in checks.items()}
    healthy = all(state in ("connected", "ready") for state in states.values())
    return {"status": passed if healthy else failed, **states}, 200 if healthy else 503


async def live_answer() -> Answer:
    """The liveness probe's answer: given at all, the process's event loop runs. It asks nothing of
    Kafka or Redis: an orchestrator restarts a process that fails it, and a restart mends no outage."""
    return {"status": "alive"}, 200


async def redis_reachable(index: RegionIndex) -> str:
    try:
        await asyncio.wait_for(index.ping(), timeout=2.0)
    except Exception as exc:  # any failure to PING means Redis is not reachable
        return f"unreachable: {type(exc).__name__}"
    return "connected"


def metrics_text(metrics: Metrics) -> bytes:
    return generate_latest(metrics.registry)
