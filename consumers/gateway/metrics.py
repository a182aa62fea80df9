"""The gateway's Prometheus metrics (seed 002 §6: connection success and failure, message latency).
No label carries a user, booking or driver id."""

from __future__ import annotations

import gc
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infra.percentiles import LATENCY_BUCKETS, LatencyWindow
from infra.process_metrics import register_process_metrics


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        # The process: CPU, memory, file descriptors, collections, build (infra.process_metrics).
        self.build_info = register_process_metrics(r)
        self.connections = Gauge("geodispatch_gateway_connections", "Open connections.", ["transport"], registry=r)
        self.connects_refused = Counter(
            "geodispatch_gateway_connects_refused_total", "Connections refused at the door, by reason.",
            ["transport", "error"], registry=r)
        self.subscriptions = Gauge(
            "geodispatch_gateway_subscriptions", "Subscriptions held, by channel kind.", ["kind"], registry=r)
        self.subscribes_refused = Counter(
            "geodispatch_gateway_subscribes_refused_total", "Subscriptions refused, by reason.", ["error"],
            registry=r)
        self.sent = Counter("geodispatch_gateway_messages_sent_total", "Messages handed to a connection.", ["kind"],
                            registry=r)
        self.throttled = Counter(
            "geodispatch_gateway_messages_throttled_total",
            "Tracking updates held back by a subscriber's rate limit (a newer one replaced them or went later).",
            registry=r)
        self.dropped = Counter(
            "geodispatch_gateway_dropped_subscribers_total",
            "Connections ended by the gateway: slow_consumer (backlog over GEODISPATCH_GATEWAY_QUEUE_LIMIT) or "
            "token_expired.", ["reason"], registry=r)
        self.delivery = Histogram(
            "geodispatch_gateway_delivery_seconds",
            "From a record's Kafka timestamp to its message's hand-over to the connection.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.records = Counter("geodispatch_gateway_records_total", "Records read, by topic kind.", ["topic"],
                               registry=r)
        self.invalid_records = Counter(
            "geodispatch_gateway_invalid_records_total", "Records read that do not decode, by topic kind.",
            ["topic"], registry=r)
        self.audited = Counter(
            "geodispatch_gateway_audited_subscriptions_total",
            "Support and admin subscriptions written to the audit log.", ["role"], registry=r)
        self.gc_pauses = Histogram(
            "geodispatch_gateway_gc_pause_seconds",
            "Python garbage collections, by generation: every connection's messages wait while one runs.",
            ["generation"], buckets=LATENCY_BUCKETS, registry=r)
        self.recent_delivery = LatencyWindow()
        self._gc_started_at = 0.0

    def watch_garbage_collections(self) -> None:
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started_at = time.perf_counter()
        else:
            self.gc_pauses.labels(str(info["generation"])).observe(time.perf_counter() - self._gc_started_at)
