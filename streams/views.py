"""The worker's HTTP API: driver sessions (seed 000), health (with its liveness and readiness probes),
stats and Prometheus metrics, as faust views. Every answer is JSON, errors included (but /metrics,
which is Prometheus text)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from faust.web import Request, Response, View

from streams.answers import (
    METRICS_CONTENT_TYPE,
    PREFIX,
    SUPPLY_DEMAND_PATH,
    Answer,
    health_answer,
    live_answer,
    metrics_text,
    nearby_answer,
    redis_reachable,
    session_answer,
    supply_demand_answer,
    timed,
)
from streams.metrics import PartitionLag
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


class Live(View):
    """The liveness probe: this process's event loop answers. Nothing outside the process is asked, so
    a broker or Redis outage never makes an orchestrator restart a worker (docs/OBSERVABILITY.md)."""

    async def get(self, request: Request) -> Response:
        body, status = await timed(self.app.runtime.metrics, "health_live", live_answer())
        return self.json(body, status=status)


class Ready(View):
    """The readiness probe: Kafka and Redis answer, and this worker acts on its partitions (tables
    restored, readers started, its part of the index rebuilt: DispatchApp.ready)."""

    async def get(self, request: Request) -> Response:
        runtime: Runtime = self.app.runtime
        checks = {"kafka": kafka_reachable(self.app), "redis": redis_reachable(runtime.index),
                  "partitions": partitions_ready(self.app)}
        body, status = await timed(runtime.metrics, "health_ready", health_answer(checks, "ready", "not_ready"))
        return self.json(body, status=status)


async def partitions_ready(app: Any) -> str:
    if app.ready():
        return "ready"
    return "rebalancing" if app.rebalancing else "restoring"


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
        metrics = self.app.runtime.metrics
        metrics.set_consumer_lag(consumer_lag(self.app))
        return self.bytes(metrics_text(metrics), content_type=METRICS_CONTENT_TYPE)


# -- consumer lag, from what the consumers already know ------------------------------------------------
# Every consumer of the worker that reads for a consumer group: faust's (the app's group: driver
# commands, status, trip events; not the topics read elsewhere nor the tables' changelogs), the ping
# reader (`<app id>.pings`) and the request reader (no group of its own: it commits in the app's
# group). The readers of the supply/demand feed read from the start, in no group, and are not
# counted. Each figure is the aiokafka consumer's position (the next record it hands over) against
# the high watermark its last fetch response carried: no broker request on a scrape. faust's position
# runs ahead of its agents by the records in its buffers (at most a fetch's worth).


LEADER_TOPIC_SUFFIX = "-__assignor-__leader"


def consumer_lag(app: Any) -> list[PartitionLag]:
    runtime: Runtime = app.runtime
    lags: list[PartitionLag] = []
    group = app.conf.id
    thread = getattr(app.consumer, "_thread", None)  # faust's consumer thread, once the consumer started
    faust_consumer = getattr(thread, "_consumer", None) if thread is not None else None
    if faust_consumer is not None:
        # Not the tables' changelogs either: faust reads them only to restore a table (and keeps its
        # position there while the worker writes on), and commits nothing of them in the group.
        # Nor faust's own leader topic (`<app id>-__assignor-__leader`), which carries no records.
        tables = getattr(app, "tables", None)
        left_out = set(app.read_elsewhere) | set(getattr(tables, "changelog_topics", ()))
        lags += [lag for lag in _partition_lags(faust_consumer, group)
                 if lag.topic not in left_out and not lag.topic.endswith(LEADER_TOPIC_SUFFIX)]
    if runtime.pings is not None:
        # The reader's consumer and group are its own (streams.agents.pings); read, never changed here.
        lags += _partition_lags(runtime.pings._consumer, runtime.pings._group)
    if runtime.request_batches is not None:
        lags += _partition_lags(runtime.request_batches._consumer, group)
    return lags


def _partition_lags(consumer: Any, group: str) -> Iterator[PartitionLag]:
    """The lag of each partition assigned to an aiokafka consumer, not paused (a reader pauses what it
    gave up), with a position and a high watermark. aiokafka's public `position()` is a coroutine that
    waits for a position being reset, and a scrape must not wait: its subscription state is read
    instead, and anything missing or changing under the read (faust's consumer runs in a thread of
    its own) leaves the partition out of this scrape."""
    if consumer is None:
        return
    try:
        subscription = consumer._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        if assignment is None:
            return
        for tp in list(assignment.tps):
            state = assignment.state_value(tp)
            if state is None or state.paused or not state.has_valid_position or state.highwater is None:
                continue
            yield PartitionLag(group, tp.topic, tp.partition, state.highwater - state.position)
    except (AttributeError, AssertionError, RuntimeError):
        return


# Path and view, in the order they are registered: /nearby before the {driver_id} route, which would
# otherwise match "nearby" too.
SESSION_ROUTES: tuple[tuple[str, type[View]], ...] = (
    (f"{PREFIX}/nearby", NearbyDrivers),
    (PREFIX + "/{driver_id}", DriverSessionView),
    (SUPPLY_DEMAND_PATH, SupplyDemandView),
)
OPERATION_ROUTES: tuple[tuple[str, type[View]], ...] = (
    ("/health", Health),
    ("/health/live", Live),
    ("/health/ready", Ready),
    ("/stats", Stats),
    ("/metrics", MetricsView),
)


def routes(serves_sessions: bool) -> tuple[tuple[str, type[View]], ...]:
    """The worker's routes: the sessions API's only when it has the `api` role."""
    return (SESSION_ROUTES if serves_sessions else ()) + OPERATION_ROUTES
