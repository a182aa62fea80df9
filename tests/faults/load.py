"""Mixed load for fault tests: drivers pinging, orders arriving, trips finishing, from a thread of its
own so a test can kill and restart workers meanwhile. Deterministic for a seed."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from infra.topics import TopicNames, region_key
from tests.integration.harness import BOOTSTRAP  # noqa: I001

# Long enough for the load's records to wait out a broker restart in the producer instead of
# failing: the broker-restart scenario sends throughout the outage.
SEND_TIMEOUT_MS = 180_000

CENTRE = (40.7128, -74.006)


def _iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Load:
    names: TopicNames
    drivers: int = 30
    ping_interval_s: float = 0.5
    requests_per_s: float = 10.0
    trip_seconds: float = 1.5
    seed: int = 7
    bootstrap: str = BOOTSTRAP
    # Every n-th assigned order is never delivered, so that some drivers are still on a trip when the
    # run ends (0: deliver everything). The Redis scenario uses it to check the restored reservations.
    keep_open_every: int = 0
    kept_open: list[str] = field(default_factory=list)
    # Orders and pings the broker acknowledged; only those count (a send can fail during a fault).
    orders: list[str] = field(default_factory=list)
    last_pings: dict[str, tuple[float, float]] = field(default_factory=dict)
    pings_sent: int = 0
    trips_ended: int = 0
    send_failures: int = 0
    # When the load first read each order's answer (epoch ms): a worker stamps its answers with its own
    # clock, which the clock-step fault moves.
    answered_at: dict[str, int] = field(default_factory=dict)
    _orders_made: int = 0
    _ping_seq: dict[str, int] = field(default_factory=dict)
    _acked_seq: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _aiokafka_level: int = logging.NOTSET
    error: BaseException | None = None

    def start(self) -> None:
        # While a fault test stops the broker, aiokafka logs every failed reconnect: thousands of
        # lines that would bury the figures. The load's own failures are counted in send_failures.
        # stop() gives the level back: later tests in this process read aiokafka's logs.
        aiokafka_log = logging.getLogger("aiokafka")
        self._aiokafka_level = aiokafka_log.level
        aiokafka_log.setLevel(logging.CRITICAL)
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        logging.getLogger("aiokafka").setLevel(self._aiokafka_level)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop(): a broken load generator must fail the test
            self.error = exc

    async def _main(self) -> None:
        rng = random.Random(self.seed)
        # Idempotent, so that the producer's own retries across a broker restart add no duplicates.
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                    enable_idempotence=True, request_timeout_ms=SEND_TIMEOUT_MS)
        consumer = AIOKafkaConsumer(self.names.responses, bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await producer.start()
        await consumer.start()
        positions = {f"fd_{n}": (CENTRE[0] + rng.uniform(-0.02, 0.02), CENTRE[1] + rng.uniform(-0.02, 0.02))
                     for n in range(self.drivers)}
        try:
            for driver in positions:
                status = {"driver_id": driver, "online": True, "eligibility": "ACTIVE", "ts": _iso()}
                await producer.send(self.names.status, json.dumps(status).encode(), key=driver.encode())
            finishing = asyncio.create_task(self._finish_trips(producer, consumer))
            next_ping = next_order = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_ping:
                    await self._ping_all(producer, rng, positions)
                    next_ping += self.ping_interval_s
                if now >= next_order:
                    await self._order(producer, rng)
                    next_order += 1 / self.requests_per_s
                await asyncio.sleep(max(0.0, min(next_ping, next_order) - time.monotonic()))
            await producer.flush()
            await asyncio.sleep(self.trip_seconds + 1)
            finishing.cancel()
        finally:
            await consumer.stop()
            await producer.stop()

    async def _ping_all(self, producer, rng, positions) -> None:
        for driver, (lat, lng) in positions.items():
            lat, lng = lat + rng.uniform(-0.0005, 0.0005), lng + rng.uniform(-0.0005, 0.0005)
            positions[driver] = (lat, lng)
            ping = {"driver_id": driver, "lat": lat, "lng": lng, "speed_mps": 7.5, "ts": _iso()}
            sent = await producer.send(self.names.locations(region_key(lat, lng)), json.dumps(ping).encode(),
                                       key=driver.encode())
            seq = self._ping_seq[driver] = self._ping_seq.get(driver, 0) + 1
            sent.add_done_callback(lambda f, d=driver, s=seq, at=(lat, lng): self._ping_acked(f, d, s, at))

    def _ping_acked(self, sent: asyncio.Future, driver: str, seq: int, at: tuple[float, float]) -> None:
        if sent.cancelled() or sent.exception() is not None:
            self.send_failures += 1
            return
        self.pings_sent += 1
        if seq > self._acked_seq.get(driver, 0):
            self._acked_seq[driver] = seq
            self.last_pings[driver] = at

    async def _order(self, producer, rng) -> None:
        order_id = f"fo_{self.seed}_{self._orders_made}"
        self._orders_made += 1
        lat, lng = CENTRE[0] + rng.uniform(-0.02, 0.02), CENTRE[1] + rng.uniform(-0.02, 0.02)
        request = {"orderId": order_id, "restaurantLatitude": lat, "restaurantLongitude": lng,
                   "customerLatitude": lat + 0.01, "customerLongitude": lng, "preparationTime": 5, "radius": 5,
                   "geoKey": region_key(lat, lng), "eventType": "AssignmentRequested", "occurredAt": _iso()}
        sent = await producer.send(self.names.requests(region_key(lat, lng)), json.dumps(request).encode(),
                                   key=order_id.encode())
        sent.add_done_callback(lambda f: self._order_acked(f, order_id))

    def _order_acked(self, sent: asyncio.Future, order_id: str) -> None:
        if sent.cancelled() or sent.exception() is not None:
            self.send_failures += 1
        else:
            self.orders.append(order_id)

    async def _finish_trips(self, producer, consumer) -> None:
        """Delivers each assigned order a while after its first answer, so drivers come free again."""
        ended: set[str] = set()
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                read_at = int(time.time() * 1000)
                for record in records:
                    answer = json.loads(record.value)
                    self.answered_at.setdefault(answer["orderId"], read_at)
                    if answer["status"] != "assigned" or answer["orderId"] in ended:
                        continue
                    ended.add(answer["orderId"])
                    if self.keep_open_every and len(ended) % self.keep_open_every == 0:
                        self.kept_open.append(answer["orderId"])
                        continue
                    asyncio.get_running_loop().call_later(
                        self.trip_seconds, lambda a=answer: asyncio.ensure_future(self._deliver(producer, a))
                    )

    async def _deliver(self, producer, answer: dict) -> None:
        event = {"orderId": answer["orderId"], "driverId": answer["driverId"], "status": "delivered", "ts": _iso()}
        await producer.send(self.names.trip_events, json.dumps(event).encode(), key=answer["driverId"].encode())
        self.trips_ended += 1
