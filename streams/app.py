"""Builds the one Faust app from the settings; nothing else happens here."""

from __future__ import annotations

from typing import Any

import faust
import structlog

from infra.settings import Settings
from infra.topics import DECISIONS_TABLE, DLQ_MAX_MESSAGE_BYTES, SESSIONS_TABLE
from streams.access import token_gate
from streams.auth import Verifier
from streams.dlq import DeadLetters
from streams.index import IndexWriter
from streams.metrics import Metrics
from streams.restore import BulkRestore
from streams.runtime import Runtime
from streams.tables import DecisionStore, SessionStore, direct_table, fenced_table
from streams.topics import Topics

log = structlog.get_logger(__name__)


class DispatchApp(faust.App):
    """The worker's faust app. It names the routes its web server serves once they are all added, so
    an operator (and the route walk of tests/integration/test_access.py) sees every door the token
    gate (streams.access) guards."""

    def on_webserver_init(self, web: Any) -> None:
        log.info("web_routes", routes=sorted({resource.canonical for resource in web.web_app.router.resources()}))


def faust_options(settings: Settings, web_middlewares: list | None = None) -> dict[str, object]:
    """Faust's keyword arguments, each from the settings object."""
    options: dict[str, object] = {
        # Our transport (streams.faust_fixes.Transport, the `geodispatch` faust.transports entry point):
        # faust's aiokafka transport with our consumer.
        "broker": [f"geodispatch://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        "store": settings.store,
        "datadir": str(settings.store_dir),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_in_thread": False,
        "web_application_options": {"middlewares": list(web_middlewares or ())},
        # faust's own views list tables and route keys; off unless an operator asks for them, and
        # behind the token gate (streams.access) either way.
        "web_tables_enabled": settings.web_faust_views,
        "web_router_enabled": settings.web_faust_views,
        "web_graph_enabled": settings.web_faust_views,
        "web_stats_enabled": settings.web_faust_views,
        "autodiscover": ["streams.agents", "streams.views"],
        "origin": "streams",
        # Agents commit only what they finished; a record is never acked while still in flight.
        "stream_wait_empty": True,
        "broker_commit_every": 500,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.kafka_session_timeout_s,
        "broker_heartbeat_interval": settings.kafka_session_timeout_s / 10,
        "broker_rebalance_timeout": settings.kafka_session_timeout_s,
        # A trade-off (GEODISPATCH_PRODUCER_LINGER_MS): a longer linger packs a backlog's changelog
        # records into fuller requests and saves CPU per ping, but every assignment answer waits for
        # its acknowledgement, so the linger adds to each request's latency (bench/README.md).
        "producer_linger_ms": settings.producer_linger_ms,
        "producer_acks": -1,
        # Room for a dead letter of the largest record an input topic accepts (see infra.topics).
        "producer_max_request_size": DLQ_MAX_MESSAGE_BYTES,
        # Everything stays bytes until our codec decodes it; table stores decode with these too.
        "key_serializer": "raw",
        "value_serializer": "raw",
        "logging_config": None,
        "loghandlers": [],
    }
    security = settings.kafka_client_options()
    if security["security_protocol"] != "PLAINTEXT":
        options["broker_credentials"] = _credentials(settings, security)
    return options


def _credentials(settings: Settings, security: dict[str, object]) -> object:
    ssl_context = security.get("ssl_context")
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=security["sasl_plain_password"],
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


def _bulk_restore(settings: Settings, metrics: Metrics, table: str) -> BulkRestore:
    return BulkRestore(settings, metrics.changelog_restored_in_bulk.labels(table=table).inc,
                       metrics.changelog_bulk_restore_failures.labels(table=table).inc)


def create_app(settings: Settings) -> DispatchApp:
    runtime = Runtime.build(settings)
    # Built here so that access settings that cannot work stop the worker at start-up.
    runtime.verifier = Verifier.from_settings(settings)
    gate = token_gate(runtime.verifier, lambda status: runtime.metrics.http_refused.labels(status=str(status)).inc())
    app = DispatchApp(settings.faust_app_id, **faust_options(settings, [gate]))
    runtime.topics = Topics(app, runtime.names, settings.regions)
    m = runtime.metrics
    sessions = fenced_table(app, SESSIONS_TABLE, settings.partitions,
                            m.changelog_write_failures.labels(table=SESSIONS_TABLE).inc,
                            _bulk_restore(settings, m, SESSIONS_TABLE),
                            m.fenced_writes.labels(store="changelog").inc)
    runtime.sessions = SessionStore(sessions, runtime.fence)
    decisions = direct_table(app, DECISIONS_TABLE, settings.partitions,
                             m.changelog_write_failures.labels(table=DECISIONS_TABLE).inc,
                             _bulk_restore(settings, m, DECISIONS_TABLE))
    runtime.decisions = DecisionStore(decisions)
    runtime.index_writer = IndexWriter(runtime.index, runtime.metrics, settings)
    runtime.dead_letters = DeadLetters(runtime.topics.dlq, runtime.metrics)
    app.runtime = runtime
    return app


app = create_app(Settings())
