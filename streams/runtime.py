"""What every handler shares besides the app: settings, metrics, codec, the index, the stores and the
services that follow this worker's partitions. Built once by streams.app.DispatchApp and hung on it,
so there is no other global."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infra.settings import Settings
from infra.topics import TopicNames
from schemas.codec import Codec
from streams.index import RegionIndex
from streams.logic.fencing import Fence
from streams.logic.scoring import ScoreWeights
from streams.logic.sessions import SessionRules
from streams.metrics import Metrics

if TYPE_CHECKING:  # the services import their handlers, which take a Runtime
    from infra.auth import Verifier
    from streams.agents.pings import PingBatches
    from streams.agents.requests import RequestBatches
    from streams.dlq import DeadLetters
    from streams.index_writer import IndexWriter
    from streams.supply_demand import SupplyDemandFeed
    from streams.tables import DecisionStore, SessionStore
    from streams.topics import Topics


class PartitionService:
    """State or work that belongs to this worker's partitions. The app calls `restored` once a
    rebalance has restored its tables (with its partitions of the driver topics), then `revoked` when
    they are taken away, on its services in the order `Runtime.partition_services` gives for the
    first and in reverse for the second: what reads records starts last and stops first."""

    async def restored(self, partitions: set[int]) -> None:
        """This worker's partitions from now on, tables restored."""

    async def revoked(self) -> None:
        """Partitions are being given up: none of what was kept of them can be trusted any more."""


@dataclass
class DriverProgress(PartitionService):
    """How far this worker has got with its drivers' partitions, beyond the tables: driver-command
    offsets applied (the index's sync waits on them), and heartbeat sweeps (streams.agents.upkeep):
    the overdue drivers of each partition as last found, and the sweeps sent and not yet applied."""

    # The next driver-command offset to apply, by partition (streams.agents.sessions).
    commands_applied: dict[int, int] = field(default_factory=dict)
    # Partition to its overdue drivers, as the last heartbeat check found them.
    heartbeats_overdue: dict[int, set[str]] = field(default_factory=dict)
    # Partition to when its heartbeat sweep was sent.
    sweeps_sent: dict[int, int] = field(default_factory=dict)

    async def revoked(self) -> None:
        """The drivers' heartbeats are now the new owner's to check."""
        self.commands_applied.clear()
        self.heartbeats_overdue.clear()
        self.sweeps_sent.clear()


@dataclass
class RequestActivity:
    """When this worker last read an assignment request, so that pings can give way to requests
    (streams.agents.pings): a request's answer takes several turns of the event loop, and each turn
    would otherwise wait for a block of pings."""

    # How long after a request pings keep giving way: requests come in streams, not alone.
    window_s: float = 0.5
    last_read: float = float("-inf")  # time.monotonic()

    def read(self) -> None:
        self.last_read = time.monotonic()

    def recent(self) -> bool:
        return time.monotonic() - self.last_read < self.window_s


@dataclass
class Runtime:
    settings: Settings
    names: TopicNames
    metrics: Metrics
    codec: Codec
    index: RegionIndex
    rules: SessionRules
    weights: ScoreWeights
    topics: Topics
    # The state of each stream role, None in a process without that role (Settings.roles): the
    # handlers that touch it are wired only with their role (streams.topology).
    sessions: SessionStore | None
    decisions: DecisionStore | None
    index_writer: IndexWriter
    dead_letters: DeadLetters
    pings: PingBatches | None
    request_batches: RequestBatches | None
    verifier: Verifier | None  # None when the API is open
    # This worker's fencing token, advanced on every partition assignment (streams.app).
    fence: Fence
    progress: DriverProgress = field(default_factory=DriverProgress)
    requests: RequestActivity = field(default_factory=RequestActivity)
    # Drivers online and available, counted by the heartbeat timer for /stats.
    stats: dict[str, Any] = field(default_factory=dict)
    # This worker's shares of the supply/demand feed (None in a process without a stream role).
    supply_demand: SupplyDemandFeed | None = None

    @property
    def partition_services(self) -> tuple[PartitionService, ...]:
        """In the order they are restored: sessions read while the tables were restored are dropped
        before pings are read again, pings stop before anything of theirs is forgotten, and requests
        are read last, stopped first. The decisions table needs none: faust restores it and it has no
        cache."""
        services: tuple[PartitionService, ...] = ()
        if self.sessions is not None and self.pings is not None:
            services = (self.sessions, self.index_writer, self.progress, self.pings)
        if self.supply_demand is not None:
            # Before requests are read: answers given from its takeover on are counted as they come.
            services += (self.supply_demand,)
        if self.request_batches is not None:
            services += (self.request_batches,)
        return services


def session_rules(settings: Settings) -> SessionRules:
    return SessionRules(
        min_ping_interval_ms=int(settings.min_ping_interval_s * 1000),
        max_future_skew_ms=int(settings.max_future_skew_s * 1000),
        tracking_interval_ms=int(1000 / settings.tracking_max_per_s),
        heartbeat_timeout_ms=int(settings.heartbeat_timeout_s * 1000),
    )


def score_weights(settings: Settings) -> ScoreWeights:
    return ScoreWeights(
        base=settings.score_base,
        slack_bonus_per_min=settings.score_slack_bonus_per_min,
        slack_bonus_cap=settings.score_slack_bonus_cap,
        slack_penalty_per_min=settings.score_slack_penalty_per_min,
        distance_penalty_per_km=settings.score_distance_penalty_per_km,
        eta_penalty_per_min=settings.score_eta_penalty_per_min,
        avg_speed_kmh=settings.avg_speed_kmh,
    )
