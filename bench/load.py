"""The load generator and the response collector, each run as its own process by the scenarios so
the load never shares a CPU-bound event loop with the worker or the measurement.

    python -m bench.load city     --drivers N [--first F]          statuses + first pings of a city
    python -m bench.load pings    --drivers N --count C [--rate R]  pings, as fast as possible or paced
    python -m bench.load requests --count C [--rate R] --tag T      assignment requests
    python -m bench.load mixed    --drivers N --ping-rate P --request-rate Q --seconds S --tag T
    python -m bench.load collect  --tag T --count C --out FILE      responses as they arrive

Each prints one JSON line at the end: what it sent (or received), how long it took, errors.
Messages are built as the contract's models and sent with the project's producers library (JSON)."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from infra.topics import TopicNames, region_key
from schemas.models import AssignmentRequested, DriverStatus, LocationPing

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
# Manhattan, Brooklyn and Queens: about 28 km by 20 km, all in region 4_-7.
CITY = (40.60, 40.85, -74.02, -73.78)


def driver_id(i: int) -> str:
    return f"drv_{i}"


def home(i: int) -> tuple[float, float]:
    """A driver's deterministic starting point in the city (the same in every process)."""
    rnd = random.Random(i)
    return rnd.uniform(CITY[0], CITY[1]), rnd.uniform(CITY[2], CITY[3])


def names() -> TopicNames:
    return TopicNames(os.environ.get("GEODISPATCH_TOPIC_PREFIX", ""))


class Producer:
    """The project's own publishing library (producers.publisher): the contract's topic, key and
    JSON encoding for each message, batched by linger, every delivery confirmed by the broker."""

    def __init__(self) -> None:
        from infra.settings import Settings
        from producers.publisher import Publisher

        self._publisher = Publisher(Settings(), fmt="json", linger_ms=5, client_id="geodispatch-bench")
        self.sent = 0

    @property
    def errors(self) -> int:
        return self._publisher.tally.failed

    async def start(self) -> None:
        await self._publisher.start()

    async def send(self, topic: str, key: str, message) -> None:
        # The publisher routes by the message itself; the bench's own idea of topic and key must agree.
        await self._publisher.send(message)
        self.sent += 1

    async def stop(self) -> None:
        await self._publisher.stop()


async def paced(items: Iterator, rate: float, seconds: float | None, send) -> tuple[int, float]:
    """Sends items at `rate` per second (0: as fast as possible) until they or `seconds` run out."""
    started = time.perf_counter()
    sent = 0
    for item in items:
        if rate > 0:
            while sent >= (time.perf_counter() - started) * rate:
                await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        if seconds is not None and elapsed >= seconds:
            break
        await send(item)
        sent += 1
        if rate <= 0 and sent % 2000 == 0:
            await asyncio.sleep(0)
    return sent, time.perf_counter() - started


def city_records(first: int, drivers: int) -> Iterator[tuple[str, str, object]]:
    n = names()
    now = datetime.now(UTC) - timedelta(seconds=30)
    for i in range(first, first + drivers):
        did = driver_id(i)
        lat, lng = home(i)
        yield n.status, did, DriverStatus(driver_id=did, online=True, eligibility="ACTIVE", ts=now)
        yield (
            n.locations(region_key(lat, lng)),
            did,
            LocationPing(driver_id=did, lat=lat, lng=lng, speed_mps=0.0, heading_deg=0.0, accuracy_m=5.0, ts=now),
        )


def ping_records(first: int, drivers: int, count: int, wall_clock: bool) -> Iterator[tuple[str, str, object]]:
    """Round-robin pings with a small random walk. A backlog (not wall_clock) stamps round r at
    `start + r * 1.05 s`, so that each driver's pings are over a second apart as they would be live."""
    n = names()
    rnd = random.Random(first * 7919 + count)
    start = datetime.now(UTC) - timedelta(seconds=2)
    for seq in range(count):
        i = (first + seq) % drivers
        lat, lng = home(i)
        lat += rnd.uniform(-0.002, 0.002)
        lng += rnd.uniform(-0.002, 0.002)
        ts = datetime.now(UTC) if wall_clock else start + timedelta(seconds=1.05 * (seq // drivers))
        did = driver_id(i)
        yield (
            n.locations(region_key(lat, lng)),
            did,
            LocationPing(
                driver_id=did,
                lat=lat,
                lng=lng,
                speed_mps=rnd.uniform(0, 15),
                heading_deg=rnd.uniform(0, 360),
                accuracy_m=5.0,
                ts=ts,
            ),
        )


def request_records(tag: str, count: int, seed: int) -> Iterator[tuple[str, str, object]]:
    """Orders from restaurants anywhere in the city to customers within about 3 km."""
    n = names()
    rnd = random.Random(seed)
    for i in range(count):
        rlat, rlng = rnd.uniform(CITY[0], CITY[1]), rnd.uniform(CITY[2], CITY[3])
        clat, clng = rlat + rnd.uniform(-0.02, 0.02), rlng + rnd.uniform(-0.025, 0.025)
        order = f"{tag}-{i}"
        geo = region_key(rlat, rlng)
        yield (
            n.requests(geo),
            order,
            AssignmentRequested(
                eventId=f"evt-{order}",
                eventType="AssignmentRequested",
                occurredAt=datetime.now(UTC).isoformat(),
                orderId=order,
                geoKey=geo,
                restaurantLatitude=rlat,
                restaurantLongitude=rlng,
                customerLatitude=clat,
                customerLongitude=clng,
                preparationTime=rnd.choice([0, 5, 10, 15, 20]),
                radius=5,
                items=[{"name": "pad thai", "qty": 1}],
                totalAmount=round(rnd.uniform(10, 60), 2),
            ),
        )


async def run_generator(args: argparse.Namespace) -> dict:
    producer = Producer()
    await producer.start()
    sent_at: list[tuple[str, float]] = []

    async def send(item) -> None:
        topic, key, message = item
        if isinstance(message, AssignmentRequested):
            sent_at.append((key, time.time()))
        await producer.send(topic, key, message)

    try:
        if args.mode == "city":
            sent, seconds = await paced(city_records(args.first, args.drivers), 0, None, send)
        elif args.mode == "pings":
            items = ping_records(args.first, args.drivers, args.count, wall_clock=args.rate > 0)
            sent, seconds = await paced(items, args.rate, args.seconds, send)
        elif args.mode == "requests":
            sent, seconds = await paced(request_records(args.tag, args.count, args.seed), args.rate, args.seconds, send)
        else:  # mixed: two paced streams in one process, one producer
            pings = ping_records(args.first, args.drivers, 10**9, wall_clock=True)
            requests = request_records(args.tag, 10**9, args.seed)
            (p_sent, p_s), (r_sent, r_s) = await asyncio.gather(
                paced(pings, args.ping_rate, args.seconds, send), paced(requests, args.request_rate, args.seconds, send)
            )
            sent, seconds = p_sent + r_sent, max(p_s, r_s)
        flush_started = time.perf_counter()
    finally:
        await producer.stop()
    result = {
        "mode": args.mode,
        "sent": sent,
        "seconds": round(seconds, 3),
        "rate": round(sent / seconds, 1) if seconds else None,
        "flush_seconds": round(time.perf_counter() - flush_started, 3),
        "errors": producer.errors,
    }
    if args.mode == "mixed":
        result.update(pings_sent=p_sent, requests_sent=r_sent)
    if sent_at and args.sent_log:
        Path(args.sent_log).write_bytes(b"\n".join(orjson.dumps(pair) for pair in sent_at))
    return result


async def collect(args: argparse.Namespace) -> dict:
    """Reads responses from the start of the topic, keeps those of this tag with their arrival time."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        names().responses,
        bootstrap_servers=BOOTSTRAP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=5,
    )
    await consumer.start()
    marker = f"{args.tag}-".encode()
    seen = 0
    out = open(args.out, "wb")  # noqa: SIM115
    deadline = time.monotonic() + args.timeout
    last_arrival = time.monotonic()
    try:
        while time.monotonic() < deadline and (args.count <= 0 or seen < args.count):
            batch = await consumer.getmany(timeout_ms=20)
            arrived = time.time()
            for records in batch.values():
                for record in records:
                    if record.key and record.key.startswith(marker):
                        body = orjson.loads(record.value)
                        out.write(
                            orjson.dumps(
                                {
                                    "orderId": body.get("orderId"),
                                    "status": body.get("status"),
                                    "driverId": body.get("driverId"),
                                    "error": body.get("error"),
                                    "eta": body.get("eta"),
                                    "arrived": arrived,
                                    "kafka_ts": record.timestamp,
                                }
                            )
                            + b"\n"
                        )
                        seen += 1
                        last_arrival = time.monotonic()
            if args.idle > 0 and seen and time.monotonic() - last_arrival > args.idle:
                break
    finally:
        out.close()
        await consumer.stop()
    return {"mode": "collect", "received": seen}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("mode", choices=["city", "pings", "requests", "mixed", "collect"])
    parser.add_argument("--drivers", type=int, default=10_000)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--ping-rate", type=float, default=5000)
    parser.add_argument("--request-rate", type=float, default=300)
    parser.add_argument("--tag", default="o")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sent-log", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--idle", type=float, default=0)
    args = parser.parse_args(argv)
    if not os.environ.get("GEODISPATCH_TOPIC_PREFIX"):
        # The bench only ever writes to topics of its own run; never to the shared, unprefixed ones.
        parser.error("GEODISPATCH_TOPIC_PREFIX is not set: run this through `python -m bench`")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(collect(args) if args.mode == "collect" else run_generator(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    if result.get("errors"):
        sys.exit(1)


if __name__ == "__main__":
    main()
