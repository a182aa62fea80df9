"""The topics the gateway reads, as a broadcast: one consumer of no group, so that every gateway
instance sees every record and can serve any subscriber.

Where each topic is read from: booking owners and the supply/demand feed whole (compacted); answers,
trip events and tracking from `gateway_lookback_s` ago (offsets_for_times), which rebuilds who drives
each active booking and its last known location after a start; pings, requests and presence from
their end (the map's present, nothing a subscriber is owed). `caught_up` is set once what was there at
the start has been read: the gateway accepts connections only then, so that nobody is refused a
booking because its owner was not read yet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.gateway.city import Applied, City
from consumers.gateway.hub import Hub
from consumers.reading import partitions_of, start
from infra.clients import new_consumer
from infra.settings import Settings
from infra.topics import TopicNames
from schemas.codec import Codec, InvalidMessage
from schemas.models import (
    AssignmentRequested,
    AssignmentResponse,
    BookingOwner,
    LocationPing,
    Message,
    PresenceChanged,
    SupplyDemand,
    TrackingUpdate,
    TripEvent,
)

log = structlog.get_logger(__name__)

# Topics the pipeline reads (and dead-letters) too.
PIPELINE_INPUTS = frozenset({"locations", "requests"})


@dataclass(frozen=True)
class Source:
    kind: str
    model: type[Message]
    # "beginning", "lookback" or "end".
    start_from: str


class Feed:
    def __init__(self, settings: Settings, codec: Codec, city: City, hub: Hub) -> None:
        self._settings = settings
        self._codec = codec
        self._city = city
        self._hub = hub
        self.caught_up = asyncio.Event()
        names = TopicNames(settings.topic_prefix)
        self._sources: dict[str, Source] = {
            names.booking_owners: Source("booking_owners", BookingOwner, "beginning"),
            names.supply_demand: Source("supply_demand", SupplyDemand, "beginning"),
            names.responses: Source("responses", AssignmentResponse, "lookback"),
            names.trip_events: Source("trip_events", TripEvent, "lookback"),
            names.tracking: Source("tracking", TrackingUpdate, "lookback"),
            names.presence: Source("presence", PresenceChanged, "end"),
        }
        for region in settings.regions:
            self._sources[names.locations(region)] = Source("locations", LocationPing, "end")
            self._sources[names.requests(region)] = Source("requests", AssignmentRequested, "end")
        self._handlers: dict[str, Callable[[ConsumerRecord, Any, float], None]] = {
            "booking_owners": self._owner, "supply_demand": self._share, "responses": self._response,
            "trip_events": self._trip, "tracking": self._tracking, "presence": self._presence,
            "locations": lambda record, ping, now: self._city.ping(ping, now),
            "requests": lambda record, request, now: self._city.request(request, now),
        }

    async def run(self) -> None:
        consumer = new_consumer(self._settings, fetch_max_wait_ms=100, auto_offset_reset="latest")
        await start(consumer, self._settings)
        try:
            partitions = await self._assign(consumer)
            ends = await consumer.end_offsets(partitions)
            behind = {tp for tp in partitions if ends[tp] > await consumer.position(tp)}
            if not behind:
                self.caught_up.set()
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                now = time.time()
                for tp, records in batches.items():
                    source = self._sources[tp.topic]
                    for record in records:
                        self._apply(source, record, now)
                if behind:
                    behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
                    if not behind:
                        log.info("gateway_caught_up", bookings=len(self._city.bookings))
                        self.caught_up.set()
        finally:
            await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        partitions = []
        for topic in self._sources:
            found = await partitions_of(consumer, topic)
            if not found:
                raise LookupError(f"topic {topic} does not exist (`geodispatch topics apply`)")
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        by_start: dict[str, list[TopicPartition]] = {}
        for tp in partitions:
            by_start.setdefault(self._sources[tp.topic].start_from, []).append(tp)
        if beginning := by_start.get("beginning"):
            await consumer.seek_to_beginning(*beginning)
        if end := by_start.get("end"):
            await consumer.seek_to_end(*end)
        if lookback := by_start.get("lookback"):
            since_ms = int((time.time() - self._settings.gateway_lookback_s) * 1000)
            found_offsets = await consumer.offsets_for_times({tp: since_ms for tp in lookback})
            await consumer.seek_to_end(*[tp for tp in lookback if found_offsets[tp] is None])
            for tp, offset in found_offsets.items():
                if offset is not None:
                    consumer.seek(tp, offset.offset)
        return partitions

    def _apply(self, source: Source, record: ConsumerRecord, now: float) -> None:
        metrics = self._hub.metrics
        metrics.records.labels(source.kind).inc()
        if record.value is None:
            if source.kind in ("booking_owners", "supply_demand"):
                self._handlers[source.kind](record, None, now)
            return
        try:
            message = self._codec.decode(source.model, record.value)
        except InvalidMessage as exc:
            metrics.invalid_records.labels(source.kind).inc()
            # The pipeline dead-letters a malformed ping or request; the map only passes it over.
            report = log.debug if source.kind in PIPELINE_INPUTS else log.error
            report("gateway_record_invalid", topic=record.topic, partition=record.partition, offset=record.offset,
                   field=exc.field, error=str(exc))
            return
        self._handlers[source.kind](record, message, now)

    def _owner(self, record: ConsumerRecord, owner: BookingOwner | None, now: float) -> None:
        key = (record.key or b"").decode(errors="replace")
        self._city.owner(owner.booking_id if owner else key, owner)

    def _share(self, record: ConsumerRecord, share: SupplyDemand | None, now: float) -> None:
        self._city.share((record.key or b"").decode(errors="replace"), share)

    def _response(self, record: ConsumerRecord, response: AssignmentResponse, now: float) -> None:
        self._send(self._city.response(response, now), record)

    def _trip(self, record: ConsumerRecord, trip: TripEvent, now: float) -> None:
        self._send(self._city.trip(trip, now), record)

    def _tracking(self, record: ConsumerRecord, update: TrackingUpdate, now: float) -> None:
        channel, payload = self._city.tracking(update, now)
        self._hub.publish(channel, payload, record.timestamp / 1000)

    def _presence(self, record: ConsumerRecord, change: PresenceChanged, now: float) -> None:
        channel, payload = self._city.presence(change, now)
        self._hub.publish(channel, payload, record.timestamp / 1000)

    def _send(self, applied: Applied, record: ConsumerRecord) -> None:
        for channel, payload in applied.messages:
            self._hub.publish(channel, payload, record.timestamp / 1000)
        for revocation in applied.revocations:
            self._hub.revoke(revocation.channel, revocation.driver, revocation.reason)
