"""The gateway scenario's load (bench.gateway), each part a process of its own, so that none
shares an event loop with the gateway or with another part:

    python -m bench.gateway_load owners      --bookings N --tag T
    python -m bench.gateway_load updates     --bookings N --tag T --seconds S [--every-s 1] [--start-at EPOCH]
    python -m bench.gateway_load subscribers --port P --bookings N --tag T [--socketio-share F] --ready FILE --out FILE
    python -m bench.gateway_load kafka       --ready FILE --out FILE

`owners` writes who owns each booking: a client's token is let in for its own booking only.
`updates` writes each booking's TrackingUpdate once every `--every-s`, its `timestamp` the moment it is
sent (the record's own timestamp is taken in the same call). `subscribers` holds one subscriber per
booking, each with a client token of that booking's owner, over SSE or (a share of them) Socket.IO,
until SIGTERM. `kafka` reads the tracking topic with a bare consumer of no group until SIGTERM: what
Kafka alone costs. The last two write what they received, with when, to --out, and write --ready once
they are listening. Each prints one JSON line at the end."""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench.load import CITY, names, paced

# Connections opened at once while the subscribers connect: the gateway checks a token per connection,
# and a burst of thousands would measure its accept queue, not what it holds.
CONNECTING_AT_ONCE = 64
SCOPES = ["booking.*.tracking"]


def booking_id(tag: str, index: int) -> str:
    return f"{tag}-b{index}"


def owner_id(tag: str, index: int) -> str:
    return f"{tag}-u{index}"


def epoch_ms(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp() * 1000


def publisher():
    from infra.settings import Settings
    from producers.publisher import Publisher

    return Publisher(Settings(), fmt="json", linger_ms=5, client_id="geodispatch-bench")


async def write_owners(args: argparse.Namespace) -> dict:
    from schemas.models import BookingOwner

    out = publisher()
    await out.start()
    try:
        now = datetime.now(UTC)
        for i in range(args.bookings):
            await out.send(BookingOwner(booking_id=booking_id(args.tag, i), user_id=owner_id(args.tag, i), ts=now))
    finally:
        await out.stop()
    return {"mode": "owners", "sent": out.tally.sent, "errors": out.tally.failed}


async def write_updates(args: argparse.Namespace) -> dict:
    from schemas.models import TrackingUpdate

    out = publisher()
    topic = names().tracking
    await out.start()

    async def send(index: int) -> None:
        # A driver circling its restaurant: where it is does not matter to the gateway, only that it moves.
        lat = CITY[0] + (index % 997) * 1e-4
        lng = CITY[2] + (index % 991) * 1e-4
        update = TrackingUpdate(booking_id=booking_id(args.tag, index), driver_id=f"{args.tag}-d{index}", lat=lat,
                                lng=lng, bearing=90.0, speed_kmh=25.0, timestamp=datetime.now(UTC))
        await out.send_raw(topic, update.booking_id.encode(), out.codec.encode(update, "json"))

    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    cpu0 = time.process_time()
    started = time.time()
    try:
        sent, seconds = await paced(itertools.cycle(range(args.bookings)), args.bookings / args.every_s,
                                    args.seconds, send)
        ended = time.time()
        cpu = time.process_time() - cpu0
    finally:
        await out.stop()
    return {"mode": "updates", "sent": sent, "seconds": round(seconds, 3), "rate": round(sent / seconds, 1),
            "started": started, "ended": ended, "cpu_share": round(cpu / seconds, 3), "errors": out.tally.failed}


@dataclass
class Subscriber:
    """One booking's follower: what it received (its timestamp as sent, when it arrived) and how it ended."""

    index: int
    booking: str
    transport: str
    connected: bool = False
    refused: str | None = None
    closed_by_gateway: bool = False
    wrong_booking: int = 0
    received: list[tuple[str, float]] = field(default_factory=list)

    def receive(self, update: dict, arrived: float) -> None:
        if update.get("booking_id") != self.booking:
            self.wrong_booking += 1
            return
        self.received.append((update["timestamp"], arrived))


async def follow_sse(session, base: str, token: str, subscriber: Subscriber, connected: asyncio.Event) -> None:
    url = f"{base}/realtime/booking.{subscriber.booking}.tracking"
    try:
        async with session.get(url, params={"token": token}) as response:
            if response.status != 200:
                subscriber.refused = f"{response.status} {(await response.text())[:200]}"
                return
            subscriber.connected = True
            connected.set()
            pending = b""
            async for chunk in response.content.iter_any():
                arrived = time.time()
                pending += chunk
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    for line in event.split(b"\n"):
                        if line.startswith(b"data: "):
                            subscriber.receive(orjson.loads(line[6:]), arrived)
            subscriber.closed_by_gateway = True
    except OSError as exc:  # aiohttp's ClientError is an OSError too
        subscriber.refused = subscriber.refused or f"{type(exc).__name__}: {exc}"
        subscriber.closed_by_gateway = subscriber.connected
    finally:
        connected.set()


async def follow_socketio(session, base: str, token: str, subscriber: Subscriber, connected: asyncio.Event):
    """A python-socketio client on the WebSocket transport: returns it, subscribed, or None."""
    import socketio

    client = socketio.AsyncClient(reconnection=False, http_session=session, handle_sigint=False)
    channel = f"booking.{subscriber.booking}.tracking"
    client.on(channel, lambda update: subscriber.receive(update, time.time()))

    def gone(*reason: object) -> None:
        subscriber.closed_by_gateway = subscriber.connected

    client.on("disconnect", gone)
    try:
        await client.connect(base, auth={"token": token}, transports=["websocket"], wait_timeout=30)
        ack = await client.call("subscribe", {"channel": channel}, timeout=30)
        if not ack.get("ok"):
            subscriber.refused = f"{ack.get('error')}: {ack.get('detail')}"
            return client
        subscriber.connected = True
        return client
    except (socketio.exceptions.SocketIOError, OSError) as exc:
        subscriber.refused = f"{type(exc).__name__}: {exc}"
        return client
    finally:
        connected.set()


async def hold_subscribers(args: argparse.Namespace) -> dict:
    import aiohttp
    import jwt

    secret = os.environ["GEODISPATCH_JWT_SECRET"]
    expires = int(time.time()) + 3600
    base = f"http://127.0.0.1:{args.port}"
    socketio_every = round(1 / args.socketio_share) if args.socketio_share > 0 else 0
    subscribers = [Subscriber(i, booking_id(args.tag, i),
                              "socketio" if socketio_every and i % socketio_every == 0 else "sse")
                   for i in range(args.bookings)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    streams: list[asyncio.Task] = []
    clients = []
    # No per-host limit: every subscriber holds its connection for the whole run.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))

    async def open_one(subscriber: Subscriber) -> None:
        token = jwt.encode({"sub": owner_id(args.tag, subscriber.index), "role": "client", "scopes": SCOPES,
                            "exp": expires}, secret, algorithm="HS256")
        connected = asyncio.Event()
        async with gate:
            if subscriber.transport == "sse":
                streams.append(asyncio.create_task(follow_sse(session, base, token, subscriber, connected)))
                await connected.wait()
            else:
                clients.append(await follow_socketio(session, base, token, subscriber, connected))

    stalls: list[tuple[float, float]] = []
    watching = asyncio.create_task(watch_loop(stalls))
    cpu0 = time.process_time()
    started = time.time()
    await asyncio.gather(*(open_one(s) for s in subscribers))
    connect_s = time.time() - started
    Path(args.ready).write_bytes(orjson.dumps({"connected": sum(s.connected for s in subscribers),
                                               "seconds": connect_s}))
    await stop.wait()
    stopped = time.time()
    watching.cancel()
    open_at_end = [s.connected and not s.closed_by_gateway for s in subscribers]
    for task in streams:
        task.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    await asyncio.gather(*(asyncio.wait_for(c.disconnect(), 5) for c in clients), return_exceptions=True)
    await session.close()
    Path(args.out).write_bytes(orjson.dumps({
        "stopped": stopped,
        "stalls": stalls,
        "subscribers": [{"index": s.index, "transport": s.transport, "connected": s.connected, "refused": s.refused,
                         "open_at_end": still_open, "wrong_booking": s.wrong_booking,
                         "received": [(epoch_ms(ts), arrived) for ts, arrived in s.received]}
                        for s, still_open in zip(subscribers, open_at_end, strict=True)],
    }))
    refusals: dict[str, int] = {}
    for s in subscribers:
        if s.refused:
            refusals[s.refused[:60]] = refusals.get(s.refused[:60], 0) + 1
    return {"mode": "subscribers", "subscribers": len(subscribers), "connected": sum(s.connected for s in subscribers),
            "socketio": sum(s.transport == "socketio" for s in subscribers), "connect_seconds": round(connect_s, 2),
            "open_at_end": sum(open_at_end), "refusals": refusals,
            "cpu_seconds": round(time.process_time() - cpu0, 2)}


async def watch_loop(stalls: list[tuple[float, float]], tick_s: float = 0.01, report_s: float = 0.02) -> None:
    """Notes (when, seconds late) each time this process's event loop woke `report_s` later than asked:
    a late update that was late here is the clients' doing, not the gateway's."""
    while True:
        asked = time.perf_counter() + tick_s
        await asyncio.sleep(tick_s)
        late = time.perf_counter() - asked
        if late >= report_s:
            stalls.append((time.time(), late))


async def read_tracking(args: argparse.Namespace) -> dict:
    """The gateway's own read of the tracking topic without the gateway: a consumer of no group from the
    end, each record decoded as JSON as the gateway's codec does."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from consumers.reading import partitions_of
    from infra.clients import new_consumer
    from infra.settings import Settings

    settings = Settings()
    topic = names().tracking
    # The gateway's own consumer settings (consumers.gateway.feed).
    consumer: AIOKafkaConsumer = new_consumer(settings, fetch_max_wait_ms=100, auto_offset_reset="latest")
    await consumer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    received: list[tuple[str, float]] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        Path(args.ready).write_text("listening")
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            arrived = time.time()
            for records in batches.values():
                for record in records:
                    received.append((orjson.loads(record.value)["timestamp"], arrived))
    finally:
        await consumer.stop()
    Path(args.out).write_bytes(orjson.dumps({"received": [(epoch_ms(ts), arrived) for ts, arrived in received]}))
    return {"mode": "kafka", "received": len(received)}


MODES = {"owners": write_owners, "updates": write_updates, "subscribers": hold_subscribers, "kafka": read_tracking}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_load")
    parser.add_argument("mode", choices=list(MODES))
    parser.add_argument("--bookings", type=int, default=100)
    parser.add_argument("--tag", default="g")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--every-s", type=float, default=1.0, help="updates: each booking's update interval")
    parser.add_argument("--start-at", type=float, default=0.0, help="updates: the epoch second to begin at")
    parser.add_argument("--port", type=int, default=6070)
    parser.add_argument("--socketio-share", type=float, default=0.0,
                        help="subscribers: the share of them on Socket.IO (the rest on SSE)")
    parser.add_argument("--ready", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not os.environ.get("GEODISPATCH_TOPIC_PREFIX"):
        # The bench only ever writes to topics of its own run; never to the shared, unprefixed ones.
        parser.error("GEODISPATCH_TOPIC_PREFIX is not set: run this through `python -m bench`")
    # These processes live for one step (the reader for the scenario) and make no garbage cycles worth
    # collecting, while a full collection over thousands of connections or the updates received stops
    # the loop for a hundred milliseconds and more: that would be charged to the gateway.
    gc.disable()
    if args.mode != "kafka":
        # The load as cheap as it gets; the bare consumer on the gateway's own loop (the stdlib's), so
        # that the two read Kafka alike.
        import uvloop

        uvloop.install()
    result = asyncio.run(MODES[args.mode](args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    if result.get("errors"):
        sys.exit(1)


if __name__ == "__main__":
    main()
