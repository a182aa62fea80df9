"""Every Prometheus metric of the worker, in one place, built on an injected registry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infra.percentiles import LATENCY_BUCKETS, LatencyWindow
from infra.process_metrics import register_process_metrics


@dataclass(frozen=True)
class PartitionLag:
    """One partition a consumer of this process reads: the group its offsets are committed in, and how
    far its position is behind the partition's high watermark (both as the consumer last knew them)."""

    group: str
    topic: str
    partition: int
    records: int


class Metrics:
    """Names follow Prometheus conventions: _total for counters, _seconds for durations.
    No label ever carries a driver id, an order id or an H3 cell (unbounded cardinality)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        # -- the process: CPU, memory, file descriptors, collections, build (infra.process_metrics)
        self.build_info = register_process_metrics(r)
        # -- consumer lag, set on every scrape of /metrics from what the consumers already know
        # (streams.views.consumer_lag): per group and topic, summed over this process's partitions.
        # No partition label: partitions x topics x groups x workers adds up; the max says which is behind.
        self.consumer_lag = Gauge(
            "geodispatch_consumer_lag_records",
            "Records between this process's consumer positions and the partitions' high watermarks, summed "
            "over its partitions of the topic.",
            ["group", "topic"],
            registry=r,
        )
        self.consumer_lag_max = Gauge(
            "geodispatch_consumer_lag_max_records",
            "The largest lag of one partition of the topic that this process reads.",
            ["group", "topic"],
            registry=r,
        )
        self.consumer_partitions = Gauge(
            "geodispatch_consumer_partitions",
            "Partitions of the topic this process reads, with a known position and high watermark.",
            ["group", "topic"],
            registry=r,
        )
        # -- every agent
        self.dead_letters = Counter(
            "geodispatch_dead_letters_total",
            "Records sent to the dead-letter topic.",
            ["stage", "error_class"],
            registry=r,
        )
        self.retries = Counter("geodispatch_retries_total", "Transient failures retried.", ["stage"], registry=r)
        self.rerouted = Counter(
            "geodispatch_rerouted_records_total",
            "Records that arrived on another partition than their key's and were moved there.",
            ["stream"],
            registry=r,
        )
        self.event_lag = Histogram(
            "geodispatch_event_lag_seconds",
            "From the record's event time to its processing.",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # -- driver sessions
        self.pings = Counter("geodispatch_pings_total", "Location pings by outcome.", ["outcome"], registry=r)
        self.positions_recovered = Counter(
            "geodispatch_positions_recovered_total",
            "Pings read back from the log when partitions were assigned: applied (each driver's last), "
            "superseded (by a later one of the same driver), or passed over (failed the first time too).",
            ["outcome"],
            registry=r,
        )
        self.status_changes = Counter(
            "geodispatch_status_changes_total",
            "Driver status records applied, by what changed.",
            ["change"],
            registry=r,
        )
        self.presence_changes = Counter(
            "geodispatch_presence_changes_total", "PresenceChanged records published.", ["reason", "online"], registry=r
        )
        self.heartbeat_timeouts = Counter(
            "geodispatch_heartbeat_timeouts_total", "Drivers marked offline for missed heartbeats.", registry=r
        )
        self.tracking_updates = Counter(
            "geodispatch_tracking_updates_total", "Rider tracking updates by outcome.", ["outcome"], registry=r
        )
        self.trip_events = Counter("geodispatch_trip_events_total", "Trip events applied.", ["status"], registry=r)
        self.drivers_online = Gauge(
            "geodispatch_drivers_online", "Online drivers in this worker's partitions.", ["region"], registry=r
        )
        self.drivers_available = Gauge(
            "geodispatch_drivers_available",
            "Online, eligible, free drivers in this worker's partitions.",
            ["region"],
            registry=r,
        )
        self.changelog_write_failures = Counter(
            "geodispatch_changelog_write_failures_total",
            "Table writes whose changelog record the broker did not take (a restore elsewhere misses them).",
            ["table"],
            registry=r,
        )
        self.store_write_failures = Counter(
            "geodispatch_store_write_failures_total",
            "Writes a table's local store (RocksDB) refused, a full disk among the causes: the worker stops.",
            ["table"],
            registry=r,
        )
        self.changelog_restored_in_bulk = Counter(
            "geodispatch_changelog_restored_in_bulk_total",
            "Changelog records applied to a table by the bulk catch-up before faust's recovery.",
            ["table"],
            registry=r,
        )
        self.changelog_bulk_restore_failures = Counter(
            "geodispatch_changelog_bulk_restore_failures_total",
            "Bulk catch-ups of a table that failed (the broker unreachable): faust's recovery read the rest.",
            ["table"],
            registry=r,
        )
        self.fenced_writes = Counter(
            "geodispatch_fenced_writes_total",
            "Writes of a worker that lost the driver's partition without noticing, refused: by the Redis "
            "index (store=index) or skipped when a sessions table is restored (store=changelog).",
            ["store"],
            registry=r,
        )
        self.index_write_seconds = Histogram(
            "geodispatch_index_write_seconds",
            "One batched write of session changes to the Redis index.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # -- assignment
        self.assignment_requests = Counter(
            "geodispatch_assignment_requests_total",
            "Assignment requests by outcome.",
            ["region", "outcome"],
            registry=r,
        )
        self.assignment_failures = Counter(
            "geodispatch_assignment_failures_total", "Failed answers by reason.", ["reason"], registry=r
        )
        self.assignment_candidates = Histogram(
            "geodispatch_assignment_candidates",
            "Candidate drivers scored per request.",
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )
        self.matched_windows = Histogram(
            "geodispatch_matched_window_orders",
            "Orders matched together per round of a window (GEODISPATCH_MATCHING=batch).",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.decisions_expired = Counter(
            "geodispatch_decisions_expired_total",
            "Decisions removed from the decisions table once no longer given again (their retention, or a "
            "failure's shorter one, passed).",
            registry=r,
        )
        self.decisions_expiry_failures = Counter(
            "geodispatch_decisions_expiry_failures_total",
            "Sweeps whose deletion of unexpiring (0.1.0) decision keys Redis did not take: those keys stay.",
            registry=r,
        )
        self.unreplicated_writes = Counter(
            "geodispatch_redis_unreplicated_writes_total",
            "Reservation or decision writes that went out before GEODISPATCH_REDIS_WAIT_REPLICAS replicas "
            "confirmed them (a replica down or behind): lost if their primary fails now.",
            registry=r,
        )
        self.reservation_conflicts = Counter(
            "geodispatch_reservation_conflicts_total", "A candidate was taken by another order first.", registry=r
        )
        self.assignment_latency = Histogram(
            "geodispatch_assignment_latency_seconds",
            "From the request's produce time to its answer being sent.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.assignment_latency_window = LatencyWindow()
        # -- the supply/demand feed (streams.supply_demand)
        self.supply_demand_records = Counter(
            "geodispatch_supply_demand_records_total",
            "Records written to dispatch.supply_demand: kind drivers or requests, outcome share (counts) or "
            "tombstone (a share at zero, or one this worker took over and does not count).",
            ["kind", "outcome"],
            registry=r,
        )
        self.supply_demand_failures = Counter(
            "geodispatch_supply_demand_failures_total",
            "Failures of the supply/demand feed: a write the broker refused (every share is written again), "
            "or the feed or the topics unreadable when partitions were taken over (tried again).",
            ["stage"],
            registry=r,
        )
        # -- HTTP
        self.http_requests = Counter(
            "geodispatch_http_requests_total", "HTTP requests answered.", ["route", "status"], registry=r
        )
        self.http_refused = Counter(
            "geodispatch_http_refused_total", "HTTP requests refused for a missing or bad token.", ["status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "geodispatch_http_request_seconds",
            "HTTP request handling time.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def set_consumer_lag(self, lags: Iterable[PartitionLag]) -> None:
        """Replaces the consumer-lag gauges with `lags`: a topic no longer read leaves them."""
        totals: dict[tuple[str, str], list[int]] = {}
        for lag in lags:
            totals.setdefault((lag.group, lag.topic), []).append(max(0, lag.records))
        for gauge in (self.consumer_lag, self.consumer_lag_max, self.consumer_partitions):
            gauge.clear()
        for (group, topic), records in totals.items():
            self.consumer_lag.labels(group, topic).set(sum(records))
            self.consumer_lag_max.labels(group, topic).set(max(records))
            self.consumer_partitions.labels(group, topic).set(len(records))

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus_client takes a lock and checks the labels on
        every call, twice per ping."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
