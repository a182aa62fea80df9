"""The worker's one Faust app, assembled in one place: the settings make the index, the stores, the
writer, the dead letters and the ping reader; streams.topology wires the agents and timers; the app
starts and stops the services that follow its partitions. Nothing happens at import."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

import faust
import orjson
import structlog
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.types import TP

from consumers.supply_demand import FeedFollower
from infra.auth import Verifier
from infra.settings import Settings
from infra.topics import DECISIONS_TABLE, DLQ_MAX_MESSAGE_BYTES, SESSIONS_TABLE, TopicNames
from schemas.codec import default_codec
from streams import topology
from streams.access import token_gate
from streams.api import json_errors
from streams.dlq import DeadLetters
from streams.faust_fixes import _request_rejoin
from streams.handover import carry_request_offsets
from streams.index import RegionIndex
from streams.index_writer import IndexWriter
from streams.logic.fencing import Fence, fence_in_time
from streams.logic.sessions import DriverSession
from streams.logic.supply_demand import DemandWindow, SupplyCounts
from streams.metrics import Metrics
from streams.restore import BulkRestore
from streams.retry import with_retries
from streams.routing import key_partition
from streams.runtime import Runtime, score_weights, session_rules
from streams.supply_demand import SupplyDemandFeed
from streams.tables import DecisionStore, SessionStore, direct_table, fenced_table
from streams.topics import Topics
from streams.views import routes

log = structlog.get_logger(__name__)
# A broker that has just started answers group requests only once its coordinator is up, seconds later.
HANDOVER_ATTEMPTS = 10
# How long a crashed worker's orderly stop may take before the process ends anyway. The stop commits
# nothing a crash left unacknowledged, so cutting it short loses nothing; the next owner reads it again.
CRASH_STOP_S = 30.0
# The exit status of a crash (mode's worker exits 1 when it re-raises the crash reason).
CRASH_EXIT_STATUS = 1


class DispatchApp(faust.App):
    """The worker: a faust app that owns everything its handlers share (`runtime`)."""

    runtime: Runtime
    # Topics faust subscribes to but never fetches: readers of ours read them (streams.topology).
    read_elsewhere: set[str]

    def __init__(self, settings: Settings) -> None:
        metrics = Metrics()
        # Built first so that access settings that cannot work stop the worker at start-up.
        verifier = Verifier.from_settings(settings)
        gate = token_gate(verifier, lambda status: metrics.http_refused.labels(status=str(status)).inc())
        super().__init__(settings.faust_app_id, **faust_options(settings, [json_errors, gate]))
        names = TopicNames(settings.topic_prefix)
        index = RegionIndex.from_settings(settings, metrics.unreplicated_writes.inc)
        topics = Topics(self, names)
        fence = Fence()
        self.read_elsewhere = set()
        self._feed_follower: FeedFollower | None = None
        readers = topology.wire(self, settings, names)
        decisions = sessions = None
        supply = SupplyCounts(settings.supply_demand_resolution, functools.partial(
            _driver_partition, partitions=settings.partitions)) if settings.runs_sessions else None
        demand = DemandWindow(settings.supply_demand_window_s * 1000) if settings.runs_assignments else None
        if settings.runs_sessions:
            sessions = SessionStore(fenced_table(
                self, SESSIONS_TABLE, names.changelog(settings.app_id, SESSIONS_TABLE), settings.partitions,
                metrics.changelog_write_failures.labels(table=SESSIONS_TABLE).inc,
                _bulk_restore(settings, metrics, SESSIONS_TABLE),
                metrics.fenced_writes.labels(store="changelog").inc,
                metrics.store_write_failures.labels(table=SESSIONS_TABLE).inc), fence, supply)
        if settings.runs_assignments:
            decisions = DecisionStore(direct_table(
                self, DECISIONS_TABLE, names.changelog(settings.app_id, DECISIONS_TABLE), settings.partitions,
                metrics.changelog_write_failures.labels(table=DECISIONS_TABLE).inc,
                _bulk_restore(settings, metrics, DECISIONS_TABLE),
                metrics.store_write_failures.labels(table=DECISIONS_TABLE).inc))
        self.runtime = Runtime(
            settings=settings,
            names=names,
            metrics=metrics,
            codec=default_codec(settings.schema_registry_url, settings.output_format, settings.topic_prefix),
            index=index,
            rules=session_rules(settings),
            weights=score_weights(settings),
            topics=topics,
            sessions=sessions,
            decisions=decisions,
            index_writer=IndexWriter(index, metrics, settings),
            dead_letters=DeadLetters(topics.dlq, metrics),
            pings=readers.pings,
            request_batches=readers.requests,
            verifier=verifier,
            fence=fence,
            supply_demand=SupplyDemandFeed(self, settings, supply, demand) if settings.runs_streams else None,
        )
        for path, view in routes(serves_sessions="api" in settings.roles):
            self.page(path)(view)
        # Set once this assignment's token is taken: faust restores the tables of an assignment while
        # the token is still being asked of the broker, and nothing may resume before it is in place.
        self._fence_taken = asyncio.Event()
        self.on_partitions_assigned.connect(self._advance_fence)
        self.on_rebalance_complete.connect(self._partitions_restored)
        self.on_partitions_revoked.connect(self._partitions_revoked)

    def on_webserver_init(self, web: Any) -> None:
        """Names the routes its web server serves once they are all added, so an operator (and the
        route walk of tests/integration/test_access.py) sees every door the token gate
        (streams.access) guards."""
        log.info("web_routes", routes=sorted({resource.canonical for resource in web.web_app.router.resources()}))

    async def crash(self, reason: BaseException) -> None:
        """A crashed worker must exit, for its orchestrator to start it again (a full disk's stop among
        others). faust's orderly stop can wait for ever on one of its services: seen once after a full
        disk, the worker logged `Stopping...` and lived on, out of its group, until it was killed. So a
        crash also arms `exit_unless_stopped` for CRASH_STOP_S."""
        if not self._crashed.is_set():
            exit_unless_stopped(CRASH_STOP_S, reason)
        await super().crash(reason)

    async def on_first_start(self) -> None:
        """Before the consumer joins its group: a process of the assignments role reads requests from
        where the deployment got to in its other shape (streams.handover)."""
        await super().on_first_start()
        settings = self.runtime.settings
        if settings.runs_assignments:
            await with_retries(lambda: carry_request_offsets(settings), "handover", self.runtime.metrics,
                               HANDOVER_ATTEMPTS, settings.retry_base_s, settings.retry_max_s)

    # -- the partitions' lifecycle ----------------------------------------------------------------

    async def _advance_fence(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        """A new assignment makes this worker the newest owner of its partitions: before any of their
        records is processed (`_partitions_restored` waits for it), its writes get a token newer than any
        earlier owner's, taken from the broker's order of the fences topic, not from a clock."""
        try:
            started = time.monotonic()
            offset = await self._append_fence_record(len(assigned))
            if offset is None:
                return
            took = time.monotonic() - started
            if not fence_in_time(took, self.runtime.settings.kafka_session_timeout_s):
                # Keeping the previous (lower) token loses every write of this assignment to the other
                # owner's, if there is one; the rejoin gives a token that surely follows the group's choice.
                self.runtime.metrics.retries.labels(stage="fence").inc()
                log.warning("fence_token_late", offset=offset, took_s=round(took, 1),
                            kept=self.runtime.fence.token, action="rejoin the group for a new assignment")
                _request_rejoin(self.consumer)
                return
            token = self.runtime.fence.advance(offset)
            log.info("fence_advanced", token=token, offset=offset, partitions=len(assigned))
        finally:
            self._fence_taken.set()

    async def _append_fence_record(self, partitions: int) -> int | None:
        """The offset of a record appended to the fences topic (acks=all), retried until the broker
        takes it: a token from a clock instead could lose to an earlier owner's. None when the worker
        stops meanwhile."""
        settings, metrics = self.runtime.settings, self.runtime.metrics
        value = orjson.dumps({"host": socket.gethostname(), "pid": os.getpid(), "partitions": partitions})
        # The producer would wait out its request timeout (twenty minutes) for a missing topic before
        # failing; an attempt is given what the token may take (fence_in_time), so the error shows.
        attempt_s = settings.kafka_session_timeout_s / 2
        delay = settings.retry_base_s
        while not self.should_stop:
            try:
                producer = await self.maybe_start_producer()
                written = await asyncio.wait_for(
                    producer.send_and_wait(self.runtime.names.fences, None, value, 0, None, None), attempt_s)
                return written.offset
            except (TimeoutError, KafkaError, ProducerSendError, OSError) as exc:
                metrics.retries.labels(stage="fence").inc()
                log.error("fence_record_failed", topic=self.runtime.names.fences, error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(settings.retry_max_s, delay * 2)
        return None

    async def _partitions_restored(self, sender: Any, **kwargs: Any) -> None:
        await self._fence_taken.wait()
        partitions = self.driver_partitions()
        for service in self.runtime.partition_services:
            await service.restored(partitions)

    async def _partitions_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        self._fence_taken.clear()
        for service in reversed(self.runtime.partition_services):
            await service.revoked()

    async def on_stop(self) -> None:
        """The readers of our own stop first, each committing what it finished: the request reader
        commits through faust's consumer, which faust stops next."""
        for reader in (self.runtime.request_batches, self.runtime.pings):
            if reader is not None:
                await reader.close()
        if self._feed_follower is not None:
            await self._feed_follower.close()
        await super().on_stop()

    def ready(self) -> bool:
        """Whether this worker acts on its partitions: with the sessions role, once it has rebuilt its
        part of the index (which needs the sessions whole); else once faust restored its tables."""
        requests = self.runtime.request_batches
        if requests is not None and not requests.ready:
            return False
        if self.runtime.settings.runs_sessions:
            return self.runtime.index_writer.epoch is not None
        return not (self.rebalancing or self.in_recovery) and bool(self.consumer.assignment())

    # -- what the index's rebuild asks of its worker (streams.index_writer.PartitionOwner) ---------

    def settled(self) -> bool:
        if self.rebalancing or self.in_recovery or not self.consumer.assignment():
            return False
        return self.runtime.pings is not None and self.runtime.pings.ready

    def rebalances(self) -> int:
        return self.rebalancing_count

    def fence_token(self) -> int:
        return self.runtime.fence.token

    def driver_partitions(self) -> set[int]:
        commands = self.runtime.names.driver_commands
        return {tp.partition for tp in self.consumer.assignment() if tp.topic == commands}

    async def driver_command_ends(self, partitions: Iterable[int]) -> dict[int, int]:
        commands = self.runtime.names.driver_commands
        ends = await self.consumer.highwaters(*(TP(commands, p) for p in partitions))
        return {tp.partition: offset for tp, offset in ends.items()}

    def driver_commands_applied(self, partition: int) -> int:
        # The next offset faust would commit: everything before it is applied, even when this worker
        # has applied no command of its own since it was assigned the partition.
        committed = self.consumer._committed_offset.get(TP(self.runtime.names.driver_commands, partition))
        return max(self.runtime.progress.commands_applied.get(partition, 0), committed or 0)

    def supply_demand_follower(self) -> FeedFollower:
        """The feed as the HTTP view reads it: followed from the first question on."""
        if self._feed_follower is None:
            self._feed_follower = FeedFollower(self.runtime.settings, self.runtime.codec)
        return self._feed_follower

    def request_partitions(self) -> set[int]:
        """The request partitions this worker answers (any region's: they share their partitions)."""
        names, regions = self.runtime.names, self.runtime.settings.regions
        topics = {names.requests(region) for region in regions}
        return {tp.partition for tp in self.consumer.assignment() if tp.topic in topics}

    def load_sessions(self) -> list[DriverSession]:
        return self.runtime.sessions.load_all() if self.runtime.sessions is not None else []


def exit_unless_stopped(within_s: float, reason: BaseException) -> threading.Timer:
    """Ends the process with CRASH_EXIT_STATUS after `within_s` unless it ended by then. A thread, not a
    task: the event loop may be what hangs."""

    def overdue() -> None:
        log.critical("crash_stop_overdue", reason=repr(reason), waited_s=within_s, action="the process exits")
        os._exit(CRASH_EXIT_STATUS)

    timer = threading.Timer(within_s, overdue)
    timer.daemon = True
    timer.start()
    return timer


def _driver_partition(driver_id: str, partitions: int) -> int:
    return key_partition(driver_id.encode(), partitions)


def faust_options(settings: Settings, web_middlewares: list | None = None) -> dict[str, object]:
    """Faust's keyword arguments, each from the settings object."""
    options: dict[str, object] = {
        # Our transport (streams.faust_fixes.Transport, the `geodispatch` faust.transports entry point):
        # faust's aiokafka transport with our consumer.
        "broker": [f"geodispatch://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        # faust's table manager with the end of a rebalance reordered (streams.faust_fixes.SeekFirstRecovery).
        "TableManager": "streams.faust_fixes:TableManager",
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
        # Agents commit only what they finished; a record is never acked while still in flight.
        "stream_wait_empty": True,
        "broker_commit_every": 500,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.kafka_session_timeout_s,
        "broker_heartbeat_interval": settings.kafka_session_timeout_s / 10,
        "broker_rebalance_timeout": settings.kafka_session_timeout_s,
        "consumer_group_instance_id": settings.kafka_group_instance_id,
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
