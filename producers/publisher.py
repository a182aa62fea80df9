"""Publishes contract messages with the right topic (region key), key and encoding, batched by linger,
each delivery confirmed by the broker; oversized records are refused before they are sent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import RecordMetadata

from infra.settings import Settings
from infra.topics import TopicNames, region_key
from schemas.codec import Codec, Format, default_codec
from schemas.models import (
    AssignmentRequested,
    AssignmentResponse,
    BookingOwner,
    DriverStatus,
    LocationPing,
    Message,
    TripEvent,
)

log = structlog.get_logger(__name__)

Headers = Sequence[tuple[str, bytes]]
# Kafka's per-record overhead (offsets, lengths, attributes, timestamps) is well under this; counted
# so that a record just under max_request_size by payload is not refused by the broker instead.
RECORD_OVERHEAD_BYTES = 128


class BrokerUnreachable(RuntimeError):
    """No broker answered at the configured bootstrap servers."""


class RecordTooLarge(ValueError):
    """A record whose key, value and headers exceed the producer's max_request_size."""

    def __init__(self, topic: str, key: bytes | None, size: int, limit: int) -> None:
        self.topic, self.key, self.size, self.limit = topic, key, size, limit
        super().__init__(
            f"record for {topic} (key {key!r}) is {size} bytes, over the {limit}-byte limit; "
            "split it or raise max_request_size together with the broker's message.max.bytes"
        )


@dataclass(frozen=True)
class Envelope:
    """A message ready to send: where it goes, its key and its encoded value."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def destination(names: TopicNames, message: Message) -> tuple[str, str]:
    """The contract's topic and key for a message (CONTRACT.md, "Topics")."""
    if isinstance(message, LocationPing):
        return names.locations(region_key(message.lat, message.lng)), message.driver_id
    if isinstance(message, DriverStatus):
        return names.status, message.driver_id
    if isinstance(message, AssignmentRequested):
        region = message.geoKey or region_key(message.restaurantLatitude, message.restaurantLongitude)
        return names.requests(region), message.orderId
    if isinstance(message, TripEvent):
        return names.trip_events, message.driverId
    if isinstance(message, AssignmentResponse):
        return names.responses, message.orderId
    if isinstance(message, BookingOwner):
        return names.booking_owners, message.booking_id
    raise TypeError(f"{type(message).__name__} is not published by upstream services")


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return (
        len(key or b"")
        + len(value or b"")
        + sum(len(name.encode()) + len(data or b"") for name, data in headers)
        + RECORD_OVERHEAD_BYTES
    )


@dataclass
class DeliveryTally:
    """What happened to what was sent: every send ends delivered or failed."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class Publisher:
    """An AIOKafkaProducer with the contract's routing. `send` queues (batched by linger_ms) and returns a
    future of the broker's acknowledgement; `publish` waits for it; `flush` waits for everything queued."""

    def __init__(
        self,
        settings: Settings,
        fmt: Format = "json",
        linger_ms: int = 5,
        max_request_size: int = 1_048_576,
        codec: Codec | None = None,
        client_id: str = "geodispatch-publisher",
    ) -> None:
        self.settings = settings
        self.names = TopicNames(settings.topic_prefix)
        self.fmt: Format = fmt
        self.codec = codec or default_codec()
        self.max_request_size = max_request_size
        self.tally = DeliveryTally()
        self._pending: set[asyncio.Future] = set()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=client_id,
            acks="all",
            # Retries after a lost acknowledgement must not write a record twice.
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_request_size=max_request_size,
            **settings.kafka_client_options(),
        )

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaConnectionError as exc:
            await self._producer.stop()
            raise BrokerUnreachable(f"cannot reach Kafka at {self.settings.kafka_bootstrap_servers}: {exc}") from exc

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self._producer.stop()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def envelope(self, message: Message, headers: Headers = ()) -> Envelope:
        topic, key = destination(self.names, message)
        return Envelope(topic, key.encode(), self.codec.encode(message, self.fmt), tuple(headers))

    async def send(self, message: Message, headers: Headers = ()) -> asyncio.Future:
        envelope = self.envelope(message, headers)
        return await self.send_raw(envelope.topic, envelope.key, envelope.value, envelope.headers)

    async def publish(self, message: Message, headers: Headers = ()) -> RecordMetadata:
        return await (await self.send(message, headers))

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> asyncio.Future:
        """Queues exact bytes (a replay, a deliberately malformed record); key partitioning is murmur2."""
        size = record_size(key, value, headers)
        if size > self.max_request_size:
            raise RecordTooLarge(topic, key, size, self.max_request_size)
        future = await self._producer.send(topic, value=value, key=key, headers=list(headers) or None)
        self.tally.sent += 1
        self._pending.add(future)
        future.add_done_callback(self._settled(topic, key))
        return future

    def _settled(self, topic: str, key: bytes | None):
        def record(future: asyncio.Future) -> None:
            self._pending.discard(future)
            if future.cancelled() or future.exception() is not None:
                self.tally.failed += 1
                failure = None if future.cancelled() else future.exception()
                error = "cancelled" if failure is None else f"{type(failure).__name__}: {failure}"
                self.tally.errors.append(error)
                log.error("delivery_failed", topic=topic, key=key, error=error)
            else:
                self.tally.delivered += 1

        return record

    async def flush(self) -> DeliveryTally:
        """Waits until every queued record is acknowledged or has failed."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        return self.tally

