"""The one typed settings object, read from the environment (GEODISPATCH_*) once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Role = Literal["sessions", "assignments", "api"]
STREAM_ROLES: tuple[Role, ...] = ("sessions", "assignments")
ALL_ROLES: tuple[Role, ...] = (*STREAM_ROLES, "api")
Matching = Literal["greedy", "batch"]
MATCHING_POLICIES: tuple[Matching, ...] = get_args(Matching)


def _env(name: str) -> AliasChoices:
    """Accept both the documented short name (KAFKA_BOOTSTRAP_SERVERS) and GEODISPATCH_-prefixed."""
    return AliasChoices(name, f"GEODISPATCH_{name}")


class Settings(BaseSettings):
    """Every knob of the pipeline. Defaults suit a laptop; README.md lists them all."""

    model_config = SettingsConfigDict(env_prefix="GEODISPATCH_", frozen=True, extra="ignore")

    # -- Kafka ----------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS"))
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    # How long the group waits for a silent worker before handing its partitions to another one:
    # the bound on how long a crashed worker's drivers and orders wait. Faust refuses one longer than
    # its broker request timeout (90 s).
    kafka_session_timeout_s: float = Field(30.0, ge=6, le=90)
    # Static membership (Kafka's group.instance.id): a worker restarted under the same id within the
    # session timeout gets its partitions back without a rebalance. Unique per worker of a group and
    # stable across its restarts (a StatefulSet pod's name); unset, every start joins as a new member.
    # A static member leaves no group on stopping: its partitions wait out the session timeout unless
    # it comes back (docs/RELIABILITY.md, "Failover time").
    kafka_group_instance_id: str | None = None
    # How long the producer waits to fill a batch; see streams/app.py (faust_options) for the trade-off.
    producer_linger_ms: int = Field(2, ge=0, le=1000)
    # Prefixes every topic name; tests use it to get topics of their own on a shared broker.
    topic_prefix: str = ""
    partitions: int = Field(4, ge=1, le=256)
    replication_factor: int = Field(1, ge=1)
    regions: Annotated[tuple[str, ...], NoDecode] = ("4_-7", "0_0", "5_0", "3_-12")
    # A Confluent-compatible schema registry (Apicurio: http://host:8080/apis/ccompat/v7): when set, the
    # Avro schema ids in records are the registry's, resolved once per id (docs/SCHEMAS.md); unset, the
    # fixed ids of schemas/avro/ids.json.
    schema_registry_url: str | None = None
    # What the worker writes to its output topics: JSON (the default), or Confluent-framed Avro with the
    # fixed ids, or, with a registry, the registry's ids (docs/SCHEMAS.md).
    output_format: Literal["json", "avro"] = "json"

    # -- Redis ----------------------------------------------------------------------------------
    redis_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), validation_alias=_env("REDIS_URL"))
    # A Redis Cluster's nodes (host:port, comma-separated; any few of them will do): when set, the index
    # and the DLQ tools use the cluster and REDIS_URL is not read.
    redis_cluster_nodes: str | None = Field(None, validation_alias=_env("REDIS_CLUSTER_NODES"))
    redis_prefix: str = "gd:"
    # The H3 resolution of the shard cells that the available drivers are kept in (streams.logic.shards):
    # finer spreads a city over more slots of a Redis Cluster, coarser lets a search read fewer of them.
    redis_shard_resolution: int = Field(5, ge=0, le=8)
    # Replicas that must confirm a reservation or decision before it counts (WAIT): Redis replicates
    # asynchronously, and a primary that dies before its replica has a reservation loses it in the
    # failover (docs/RELIABILITY.md). 0 for a Redis without replicas; 1 on `make cluster-up`'s cluster.
    redis_wait_replicas: int = Field(0, ge=0, le=5)
    redis_wait_timeout_ms: int = Field(100, ge=1, le=10_000)

    # -- worker ---------------------------------------------------------------------------------
    app_id: str = "geodispatch"
    # What a worker process does (`geodispatch worker --roles`): the stream processors (`sessions`:
    # pings, statuses, trips and the driver index; `assignments`: requests), and the sessions API
    # (`api`), which answers from the shared index alone, so API processes run beside the stream
    # processors in any number. A process of the assignments role alone is a consumer group of its
    # own (faust_app_id), so that requests never wait behind pings (docs/DEPLOYMENT.md).
    roles: Annotated[tuple[Role, ...], NoDecode] = ALL_ROLES
    # Added to the process's nice value when it starts (os.nice): where processes of several roles
    # share a machine, the one with a higher value gets the CPU only when the others leave it idle.
    # `geodispatch run` gives the sessions process one, so pings never take the CPU from requests.
    niceness: int = Field(0, ge=0, le=19)
    # Holds a directory per app id (faust_app_id), so deployments sharing it keep their stores apart.
    data_dir: Path = Path(".cache/worker")
    store: str = "rocksdb://"
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    # faust's own views (/table/..., /router/..., /graph/, its statistics): they list the tables and
    # where keys live, which is nothing a client of the contract needs.
    web_faust_views: bool = False
    log_format: Literal["auto", "json", "console"] = "auto"
    # The worker's event loop. The stdlib loop by default: uvloop made no difference on the ping
    # profile (bench/README.md), and under it a write to a connection the broker had dropped raises
    # a RuntimeError that aiokafka does not catch (aio-libs/aiokafka#1038), which crashed a worker
    # when the broker was SIGKILLed (docs/RELIABILITY.md). `uvloop` is there to compare again.
    event_loop: Literal["uvloop", "asyncio"] = "asyncio"
    log_level: str = "INFO"
    # A newly assigned table partition whose store lacks at least this many changelog records (a wiped
    # or new data directory, a long stop) is read in bulk before faust's recovery (streams/restore.py);
    # 0: never.
    bulk_restore_min_records: int = Field(1000, ge=0)

    # -- driver sessions ------------------------------------------------------------------------
    heartbeat_interval_s: float = Field(5.0, gt=0)
    missed_heartbeats: int = Field(3, ge=1)
    min_ping_interval_s: float = Field(1.0, ge=0)
    max_future_skew_s: float = Field(60.0, ge=0)
    tracking_max_per_s: float = Field(1.0, gt=0)
    location_max_age_s: float = Field(60.0, gt=0)
    # Pings fetched and applied at a time (streams/agents/pings.py).
    ping_batch_max_records: int = Field(2000, ge=1, le=100_000)

    # -- the supply/demand feed (streams.supply_demand) ------------------------------------------
    # The H3 resolution of its cells: 7 is ~5 km² a cell, a neighbourhood.
    supply_demand_resolution: int = Field(7, ge=0, le=9)
    # The sliding window the demand counts (requests, assignments, refusals) cover.
    supply_demand_window_s: int = Field(300, ge=1, le=86_400)

    # -- assignment (seed 003's priority score) -------------------------------------------------
    # Non-negative weights keep the score non-increasing in the driver's distance, which is what
    # lets the candidate search stop at the nearest few drivers.
    avg_speed_kmh: float = Field(30.0, gt=0)
    score_base: float = 100.0
    score_slack_bonus_per_min: float = Field(10.0, ge=0)
    score_slack_bonus_cap: float = Field(50.0, ge=0)
    score_slack_penalty_per_min: float = Field(20.0, ge=0)
    score_distance_penalty_per_km: float = Field(5.0, ge=0)
    score_eta_penalty_per_min: float = Field(2.0, ge=0)
    # Candidates fetched nearest first; the score is monotone in distance, so a few suffice.
    candidates_wanted: int = Field(8, ge=1, le=1000)
    # A failed answer is given again for this long, then a retry of the order is a fresh attempt.
    failed_decision_ttl_s: int = Field(60, ge=1)
    # How long an order's decision is kept, in Redis and in the decisions table: a request redelivered
    # within it is answered as before; one older than it (less max_future_skew_s) when read is answered
    # "Request expired" instead of decided again, since its decision may be gone (README.md).
    decision_retention_s: int = Field(86_400, ge=10)
    # Requests in progress at once: being decided (a block at a time, streams.agents.requests) or their
    # answers awaiting the broker's acknowledgement; a request is committed only once its answer is
    # acknowledged. A block is at most a quarter of it, so the next blocks are decided while earlier
    # answers wait for the broker (bench/README.md).
    answers_in_flight: int = Field(256, ge=1, le=10_000)
    # greedy: each request of a block, in turn, gets its best candidate still free. batch: the requests
    # of a window are matched together (streams.logic.matching): most orders served, then the highest
    # total score; each waits up to match_window_ms for the others of its window.
    matching: Matching = "greedy"
    match_window_ms: int = Field(300, ge=1, le=10_000)

    # -- failures -------------------------------------------------------------------------------
    retry_attempts: int = Field(4, ge=1)
    retry_base_s: float = Field(0.1, gt=0)
    retry_max_s: float = Field(2.0, gt=0)
    # How long the assignment stage keeps trying Redis before it dead-letters a request: longer than a
    # Redis restart or failover, or a worker's lost link to Redis, lasts, so that their requests wait
    # and are answered instead (docs/RELIABILITY.md, the Redis cut of one worker).
    assignment_retry_s: float = Field(30.0, ge=0)

    # -- access ---------------------------------------------------------------------------------
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    # A scope the token must carry (in `scope` or `scp`); none required when unset.
    jwt_scope: str | None = None
    # Clock skew tolerated on a token's exp/nbf/iat between its issuer and us: an expired token is still
    # accepted, and a gateway stream still served, this long after its exp.
    jwt_leeway_s: float = Field(30.0, ge=0, le=600)

    # -- the real-time gateway (consumers.gateway, `geodispatch gateway`) ------------------------
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(6070, ge=1, le=65535)
    # How far back the gateway reads assignments, trips and tracking when it starts, so that a client
    # reconnecting to a gateway started meanwhile finds its booking's driver and last known location.
    gateway_lookback_s: int = Field(300, ge=0, le=86_400)
    # A subscriber whose oldest waiting message has waited this long is disconnected as too slow (a
    # tracking screen that far behind shows the past; reconnected, it starts from the last location).
    gateway_send_timeout_s: float = Field(5.0, gt=0, le=300)
    # Messages waiting for one subscriber beyond which it is disconnected all the same: the bound on the
    # memory one connection holds, whatever a burst brings within the send timeout.
    gateway_queue_limit: int = Field(4096, ge=1, le=1_000_000)
    # How often the live map's channel sends a snapshot of the city.
    gateway_map_interval_s: float = Field(1.0, ge=0.1, le=60)

    @field_validator("regions", "jwt_algorithms", "roles", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("roles")
    @classmethod
    def _supported_roles(cls, roles: tuple[Role, ...]) -> tuple[Role, ...]:
        if not roles:
            raise ValueError("at least one role: sessions, assignments, api")
        return tuple(role for role in ALL_ROLES if role in roles)

    @model_validator(mode="after")
    def _decisions_outlive_clock_skew(self) -> Settings:
        if self.decision_retention_s <= self.max_future_skew_s:
            raise ValueError("decision_retention_s must be longer than max_future_skew_s: every request would "
                             "count as expired")
        return self

    @property
    def runs_streams(self) -> bool:
        """Whether this process runs the stream processors (faust), or only the sessions API."""
        return any(role in STREAM_ROLES for role in self.roles)

    @property
    def runs_sessions(self) -> bool:
        return "sessions" in self.roles

    @property
    def runs_assignments(self) -> bool:
        return "assignments" in self.roles

    @property
    def deployment_group(self) -> str:
        """The consumer group of the processes with the sessions role, and the app id that names the
        changelog topics whatever the deployment's shape (streams.tables)."""
        return f"{self.topic_prefix}{self.app_id}"

    @property
    def assignments_group(self) -> str:
        """The consumer group of the processes with the assignments role alone: a group of their own,
        so that they split the requests among themselves and leave the driver topics to the others."""
        return f"{self.topic_prefix}{self.app_id}-assignments"

    @property
    def faust_app_id(self) -> str:
        """The faust app id: the consumer group, and where its stores live."""
        if self.runs_assignments and not self.runs_sessions:
            return self.assignments_group
        return self.deployment_group

    @property
    def store_dir(self) -> Path:
        """This app id's own table stores: another app id's stores hold offsets of other changelogs."""
        return self.data_dir / self.faust_app_id

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.heartbeat_interval_s * self.missed_heartbeats

    @property
    def position_recovery_s(self) -> float:
        """How far back the ping log is read when partitions are assigned (streams/agents/pings.py): a
        position older than the location age is never offered, and a driver's last sign of life older
        than the heartbeat timeout times it out anyway."""
        return max(self.location_max_age_s, self.heartbeat_timeout_s)

    def kafka_client_options(self) -> dict[str, object]:
        """aiokafka keyword arguments for security, shared by every client the project creates."""
        options: dict[str, object] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
                certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
                keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
        return options
