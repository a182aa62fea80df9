"""The worker's HTTP API: driver sessions (seed 000), health, stats and Prometheus metrics.
Every answer is JSON, errors included (but /metrics, which is Prometheus text)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.index import now_ms
from streams.logic.queries import BadQuery, parse_nearby
from streams.runtime import Runtime

log = structlog.get_logger(__name__)
PREFIX = "/driver-sessions/sessions"
METRICS_CONTENT_TYPE = "; ".join(p for p in CONTENT_TYPE_LATEST.split("; ") if not p.startswith("charset="))


def _timed(route: str):
    """Counts and times each request; turns an unexpected error into a JSON 500."""

    def decorate(handler):
        async def wrapper(self: View, request: Request, **kwargs: Any) -> Response:
            runtime: Runtime = self.app.runtime
            started = time.perf_counter()
            try:
                response = await handler(self, request, **kwargs)
            except Exception as exc:  # answered, logged and counted: never a bare text 500
                log.exception("http_error", route=route)
                response = self.json({"error": "internal error", "detail": type(exc).__name__}, status=500)
            runtime.metrics.http_requests.labels(route=route, status=str(response.status)).inc()
            runtime.metrics.http_seconds.labels(route=route).observe(time.perf_counter() - started)
            return response

        return wrapper

    return decorate


class NearbyDrivers(View):
    @_timed("nearby")
    async def get(self, request: Request) -> Response:
        try:
            query = parse_nearby(request.query)
        except BadQuery as exc:
            return self.json({"error": exc.reason, "parameter": exc.parameter}, status=400)
        runtime: Runtime = self.app.runtime
        fresh_since = now_ms() - int(runtime.settings.location_max_age_s * 1000)
        drivers, cells = await runtime.index.nearby(query.h3, query.k, query.limit, fresh_since)
        return self.json({"drivers": drivers, "queried_cells": cells})


class DriverSessionView(View):
    @_timed("session")
    async def get(self, request: Request, driver_id: str) -> Response:
        response = await self.app.runtime.index.session_response(driver_id)
        if response is None:
            return self.json({"error": f"no session for driver {driver_id!r}", "driver_id": driver_id}, status=404)
        return self.json(response)


class Health(View):
    @_timed("health")
    async def get(self, request: Request) -> Response:
        runtime: Runtime = self.app.runtime
        checks = {"kafka": await _kafka_reachable(self.app), "redis": await _redis_reachable(runtime)}
        healthy = all(state == "connected" for state in checks.values())
        return self.json({"status": "healthy" if healthy else "unhealthy", **checks}, status=200 if healthy else 503)


async def _kafka_reachable(app: Any) -> str:
    producer = getattr(app.producer, "_producer", None)
    if producer is None:
        return "not started"
    try:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout=2.0)
    except Exception as exc:  # any failure to get metadata means the broker is not reachable
        return f"unreachable: {type(exc).__name__}"
    return "connected"


async def _redis_reachable(runtime: Runtime) -> str:
    try:
        await asyncio.wait_for(runtime.index.ping(), timeout=2.0)
    except Exception as exc:  # any failure to PING means Redis is not reachable
        return f"unreachable: {type(exc).__name__}"
    return "connected"


class Stats(View):
    @_timed("stats")
    async def get(self, request: Request) -> Response:
        runtime: Runtime = self.app.runtime
        return self.json(stats_document(runtime))


def _counter_totals(metric) -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample in metric.collect()[0].samples:
        if sample.name.endswith("_total"):
            label = ",".join(f"{v}" for v in sample.labels.values()) or "all"
            totals[label] = totals.get(label, 0) + sample.value
    return totals


def stats_document(runtime: Runtime) -> dict[str, Any]:
    m = runtime.metrics
    latency = m.assignment_latency_window.percentiles(0.5, 0.95, 0.99)
    return {
        "drivers": {
            "online": runtime.stats.get("drivers_online", 0),
            "available": runtime.stats.get("drivers_available", 0),
            "in_memory": len(runtime.sessions.cache),
        },
        "pings": _counter_totals(m.pings),
        "status_changes": _counter_totals(m.status_changes),
        "presence_changes": _counter_totals(m.presence_changes),
        "tracking_updates": _counter_totals(m.tracking_updates),
        "trip_events": _counter_totals(m.trip_events),
        "assignments": {
            "requests": _counter_totals(m.assignment_requests),
            "failures": _counter_totals(m.assignment_failures),
            "reservation_conflicts": _counter_totals(m.reservation_conflicts).get("all", 0),
            "latency_seconds": latency,
        },
        "dead_letters": _counter_totals(m.dead_letters),
        "retries": _counter_totals(m.retries),
        "rerouted": _counter_totals(m.rerouted),
        "index": {"pending_writes": runtime.index_writer.pending, "epoch": runtime.index_writer.epoch},
    }


class Metrics(View):
    async def get(self, request: Request) -> Response:
        # aiohttp refuses a charset inside content_type; the Prometheus text format is UTF-8 anyway.
        return self.bytes(generate_latest(self.app.runtime.metrics.registry), content_type=METRICS_CONTENT_TYPE)




# Path and view, in the order they are registered: /nearby before the {driver_id} route, which would
# otherwise match "nearby" too.
ROUTES: tuple[tuple[str, type[View]], ...] = (
    (f"{PREFIX}/nearby", NearbyDrivers),
    (PREFIX + "/{driver_id}", DriverSessionView),
    ("/health", Health),
    ("/stats", Stats),
    ("/metrics", Metrics),
)
