"""The worker's HTTP API: driver sessions (seed 000), health, stats and Prometheus metrics, as faust
views. Every answer is JSON, errors included (but /metrics, which is Prometheus text)."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.web import Request, Response, View

from streams.answers import (
    METRICS_CONTENT_TYPE,
    PREFIX,
    SUPPLY_DEMAND_PATH,
    Answer,
    health_answer,
    metrics_text,
    nearby_answer,
    redis_reachable,
    session_answer,
    supply_demand_answer,
    timed,
)
from streams.runtime import Runtime


async def kafka_reachable(app: Any) -> str:
    producer = getattr(app.producer, "_producer", None)
    if producer is None:
        return "not started"
    try:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout=2.0)
    except Exception as exc:  # any failure to get metadata means the broker is not reachable
        return f"unreachable: {type(exc).__name__}"
    return "connected"


class NearbyDrivers(View):
    async def get(self, request: Request) -> Response:
        runtime: Runtime = self.app.runtime
        answering = nearby_answer(runtime.index, runtime.settings.location_max_age_s, request.query)
        body, status = await timed(runtime.metrics, "nearby", answering)
        return self.json(body, status=status)


class DriverSessionView(View):
    async def get(self, request: Request, driver_id: str) -> Response:
        runtime: Runtime = self.app.runtime
        body, status = await timed(runtime.metrics, "session", session_answer(runtime.index, driver_id))
        return self.json(body, status=status)


class SupplyDemandView(View):
    async def get(self, request: Request) -> Response:
        runtime: Runtime = self.app.runtime
        settings = runtime.settings
        answering = supply_demand_answer(self.app.supply_demand_follower(), settings.supply_demand_resolution,
                                         settings.supply_demand_window_s, request.query)
        body, status = await timed(runtime.metrics, "supply_demand", answering)
        return self.json(body, status=status)


class Health(View):
    async def get(self, request: Request) -> Response:
        runtime: Runtime = self.app.runtime
        checks = {"kafka": kafka_reachable(self.app), "redis": redis_reachable(runtime.index)}
        body, status = await timed(runtime.metrics, "health", health_answer(checks))
        return self.json(body, status=status)


class Stats(View):
    async def get(self, request: Request) -> Response:
        runtime: Runtime = self.app.runtime
        partitions = {"assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in self.app.consumer.assignment()),
                      "rebalancing": bool(self.app.rebalancing)}
        body, status = await timed(runtime.metrics, "stats", stats_answer(runtime, self.app.ready(), partitions))
        return self.json(body, status=status)


def _counter_totals(metric) -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample in metric.collect()[0].samples:
        if sample.name.endswith("_total"):
            label = ",".join(f"{v}" for v in sample.labels.values()) or "all"
            totals[label] = totals.get(label, 0) + sample.value
    return totals


async def stats_answer(runtime: Runtime, ready: bool, partitions: dict[str, Any]) -> Answer:
    return stats_document(runtime, ready, partitions), 200


def stats_document(runtime: Runtime, ready: bool, partitions: dict[str, Any]) -> dict[str, Any]:
    """The worker's figures; `partitions`: the topic partitions it holds ("topic:n") and whether its
    group is rebalancing."""
    m = runtime.metrics
    latency = m.assignment_latency_window.percentiles(0.5, 0.95, 0.99)
    return {
        "roles": list(runtime.settings.roles),
        "ready": ready,
        "partitions": partitions,
        "drivers": {
            "online": runtime.stats.get("drivers_online", 0),
            "available": runtime.stats.get("drivers_available", 0),
            "in_memory": len(runtime.sessions.cache) if runtime.sessions is not None else 0,
        },
        "pings": _counter_totals(m.pings),
        "status_changes": _counter_totals(m.status_changes),
        "presence_changes": _counter_totals(m.presence_changes),
        "tracking_updates": _counter_totals(m.tracking_updates),
        "trip_events": _counter_totals(m.trip_events),
        "assignments": {
            "requests": _counter_totals(m.assignment_requests),
            "failures": _counter_totals(m.assignment_failures),
            "matching": runtime.settings.matching,
            "reservation_conflicts": _counter_totals(m.reservation_conflicts).get("all", 0),
            "latency_seconds": latency,
        },
        "dead_letters": _counter_totals(m.dead_letters),
        "retries": _counter_totals(m.retries),
        "rerouted": _counter_totals(m.rerouted),
        "index": {"pending_writes": runtime.index_writer.pending, "epoch": runtime.index_writer.epoch},
    }


class MetricsView(View):
    async def get(self, request: Request) -> Response:
        return self.bytes(metrics_text(self.app.runtime.metrics), content_type=METRICS_CONTENT_TYPE)


# Path and view, in the order they are registered: /nearby before the {driver_id} route, which would
# otherwise match "nearby" too.
SESSION_ROUTES: tuple[tuple[str, type[View]], ...] = (
    (f"{PREFIX}/nearby", NearbyDrivers),
    (PREFIX + "/{driver_id}", DriverSessionView),
    (SUPPLY_DEMAND_PATH, SupplyDemandView),
)
OPERATION_ROUTES: tuple[tuple[str, type[View]], ...] = (
    ("/health", Health),
    ("/stats", Stats),
    ("/metrics", MetricsView),
)


def routes(serves_sessions: bool) -> tuple[tuple[str, type[View]], ...]:
    """The worker's routes: the sessions API's only when it has the `api` role."""
    return (SESSION_ROUTES if serves_sessions else ()) + OPERATION_ROUTES
