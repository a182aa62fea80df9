"""What every agent and view shares besides the app: settings, metrics, codec, the index, rules.
Built once by streams.app and hung on the app object, so there is no other global."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infra.settings import Settings
from infra.topics import TopicNames
from schemas.codec import Codec, default_codec
from streams.index import RegionIndex
from streams.logic.fencing import Fence
from streams.logic.scoring import ScoreWeights
from streams.logic.sessions import SessionRules
from streams.metrics import Metrics


@dataclass
class Runtime:
    settings: Settings
    names: TopicNames
    metrics: Metrics
    codec: Codec
    index: RegionIndex
    rules: SessionRules
    weights: ScoreWeights
    # Wired by streams.app once the app exists.
    topics: Any = None
    sessions: Any = None
    decisions: Any = None
    index_writer: Any = None
    dead_letters: Any = None
    pings: Any = None  # streams.agents.pings.PingBatches
    verifier: Any = None  # streams.auth.Verifier, or None when the API is open
    stats: dict[str, Any] = field(default_factory=dict)
    # The next driver-command offset to apply, by partition (streams.agents.sessions).
    commands_applied: dict[int, int] = field(default_factory=dict)
    # Heartbeat checks sent and not yet applied: driver id to when (streams.agents.upkeep).
    heartbeat_checks: dict[str, int] = field(default_factory=dict)
    # This worker's fencing token, advanced on every partition assignment (streams.agents.upkeep).
    fence: Fence = field(default_factory=Fence)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        return cls(
            settings=settings,
            names=TopicNames(settings.topic_prefix),
            metrics=Metrics(),
            codec=default_codec(),
            index=RegionIndex.from_url(
                settings.redis_url.get_secret_value(), settings.redis_prefix, settings.partitions
            ),
            rules=SessionRules(
                min_ping_interval_ms=int(settings.min_ping_interval_s * 1000),
                max_future_skew_ms=int(settings.max_future_skew_s * 1000),
                tracking_interval_ms=int(1000 / settings.tracking_max_per_s),
                heartbeat_timeout_ms=int(settings.heartbeat_timeout_s * 1000),
            ),
            weights=ScoreWeights(
                base=settings.score_base,
                slack_bonus_per_min=settings.score_slack_bonus_per_min,
                slack_bonus_cap=settings.score_slack_bonus_cap,
                slack_penalty_per_min=settings.score_slack_penalty_per_min,
                distance_penalty_per_km=settings.score_distance_penalty_per_km,
                eta_penalty_per_min=settings.score_eta_penalty_per_min,
                avg_speed_kmh=settings.avg_speed_kmh,
            ),
        )
