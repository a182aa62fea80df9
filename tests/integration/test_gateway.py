"""The real-time gateway (issue 25) against the real broker, followed by clients nobody here wrote: the
Node socket.io-client and the eventsource package (tests/clients/subscribe.js), one of them through a
TCP proxy that cuts its connection, and a raw socket that stops reading. The test writes the records
the gateway reads itself, and compares each record's Kafka timestamp with when a client printed it:
one machine, one clock."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import default_codec
from schemas.models import AssignmentResponse, BookingOwner, Message, PresenceChanged, TrackingUpdate, TripEvent
from tests.integration.cutting_proxy import CuttingProxy
from tests.integration.harness import ROOT, Deployment, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

CLIENTS = ROOT / "tests" / "clients"
SUBSCRIBE = CLIENTS / "subscribe.js"
SECRET = f"gateway-test-{uuid.uuid4().hex}"
MAX_PER_S = 2
# A stalled subscriber is dropped this long after its oldest waiting message was queued.
SEND_TIMEOUT_S = 1.0
GATEWAY_SETTINGS = {"GEODISPATCH_JWT_LEEWAY_S": "0", "GEODISPATCH_TRACKING_MAX_PER_S": str(MAX_PER_S),
                    "GEODISPATCH_GATEWAY_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S)}
# From a record's Kafka timestamp to a client printing it (issue 25's "within 200 ms").
ON_TIME_MS = 200
CLIENT_SCOPES = ("booking.*.tracking", "user.*.events")


def now_ms() -> int:
    return int(time.time() * 1000)


def token(sub: str, role: str = "client", scopes: tuple[str, ...] = CLIENT_SCOPES, ttl_s: float = 600,
          secret: str = SECRET) -> str:
    """An HS256 token as an identity service would issue it (seed 002 §1), made without the gateway's code."""
    claims = {"sub": sub, "role": role, "scopes": list(scopes), "exp": int(time.time() + ttl_s)}
    return jwt.encode(claims, secret, algorithm="HS256")


class BackgroundLoop:
    """An event loop in a thread of its own, for the Kafka producer while the test waits
    on subprocesses."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway-test-loop", daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Feed:
    """Writes the records the gateway reads, each with the Kafka timestamp its delivery is timed from."""

    def __init__(self, background: BackgroundLoop, dep: Deployment) -> None:
        self._background = background
        self.names = dep.names
        self._producer = background.run(self._started_producer(dep.bootstrap))

    @staticmethod
    async def _started_producer(bootstrap: str) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        await producer.start()
        return producer

    def send(self, topic: str, key: str, message: Message) -> int:
        """Writes one record and returns its Kafka timestamp (ms)."""
        sent = self._background.run(self._producer.send_and_wait(
            topic, default_codec().encode(message), key=key.encode(), timestamp_ms=now_ms()))
        return sent.timestamp

    def send_many(self, topic: str, records: list[tuple[str, Message]]) -> None:
        async def send_all() -> None:
            for key, message in records:
                await self._producer.send(topic, default_codec().encode(message), key=key.encode())
            await self._producer.flush()

        self._background.run(send_all())

    def own(self, booking_id: str, user_id: str) -> None:
        self.send(self.names.booking_owners, booking_id,
                  BookingOwner(booking_id=booking_id, user_id=user_id, ts=datetime.now(UTC)))

    def track(self, booking_id: str, driver_id: str, step: int) -> tuple[int, dict[str, Any]]:
        """A driver's position on a booking, `step` 11 m north of the last; its Kafka timestamp and the
        payload a subscriber must receive (seed 002 §2.1)."""
        update = TrackingUpdate(booking_id=booking_id, driver_id=driver_id, lat=40.7128 + step * 1e-4, lng=-74.006,
                                bearing=0.0, speed_kmh=36.0, timestamp=datetime.now(UTC))
        written = self.send(self.names.tracking, booking_id, update)
        return written, json.loads(default_codec().encode(update))

    def assign(self, booking_id: str, driver_id: str) -> None:
        self.send(self.names.responses, booking_id,
                  AssignmentResponse(orderId=booking_id, status="assigned", driverId=driver_id, eta=240,
                                     assignedAt=datetime.now(UTC)))

    def trip(self, booking_id: str, driver_id: str, status: str) -> None:
        self.send(self.names.trip_events, booking_id,
                  TripEvent(orderId=booking_id, driverId=driver_id, status=status, ts=datetime.now(UTC)))

    def close(self) -> None:
        self._background.run(self._producer.stop())


class Follower:
    """A subscribe.js process and the JSON lines it printed so far (anything else it prints is kept as
    an `output` event, to show when a check fails)."""

    def __init__(self, url: str, access: str, channels: list[str], transport: str = "socketio") -> None:
        args = ["node", str(SUBSCRIBE), "--url", url, "--token", access, "--transport", transport,
                "--duration-s", "90"]
        for channel in channels:
            args += ["--channel", channel]
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"at": now_ms(), "event": "output", "channel": None, "data": line.rstrip()})

    def of(self, event: str, channel: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """The events of a kind (on a channel), from the `since`th event printed on."""
        return [e for e in self.events[since:] if e["event"] == event and (channel is None or e["channel"] == channel)]

    def messages(self, channel: str, since: int = 0) -> list[dict[str, Any]]:
        return self.of("message", channel, since)

    def wait_for(self, event: str, channel: str | None = None, where: Callable[[dict[str, Any]], bool] = bool,
                 since: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        """The first event of a kind (on a channel, meeting `where`) printed from the `since`th on."""
        try:
            found = wait_for(lambda: next((e for e in self.of(event, channel, since) if where(e)), None),
                             timeout=timeout, interval=0.02, message=f"{event} on {channel}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe client printed:\n{self.transcript()}") from None
        return found

    def subscribed(self, channel: str, since: int = 0) -> dict[str, Any]:
        """The server's answer to subscribing to `channel`: the Socket.IO ack (by SSE, {"ok": true} once
        the stream opens; a refusal is an `error` event with the HTTP status)."""
        return self.wait_for("subscribed", channel, since=since, timeout=15.0)["data"]

    def transcript(self) -> str:
        return "\n".join(json.dumps(e) for e in self.events[-40:])

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Gateway:
    """One `geodispatch gateway` process of a deployment of its own, and the feed of records it reads."""

    def __init__(self, dep: Deployment, process: WorkerProcess, feed: Feed, background: BackgroundLoop) -> None:
        self.dep = dep
        self.process = process
        self.feed = feed
        self.background = background
        self.url = f"http://127.0.0.1:{process.port}"

    def follow(self, access: str, *channels: str, transport: str = "socketio", url: str | None = None) -> Follower:
        return Follower(url or self.url, access, list(channels), transport)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a sample of /metrics over the series with these labels."""
        status, text = self.process.get("/metrics")
        assert status == 200, text
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == name and labels.items() <= sample.labels.items())

    def owned(self, booking_id: str, user_id: str) -> None:
        """Writes who owns the booking and waits until the gateway has read it (its count of owner records)."""
        before = self.metric("geodispatch_gateway_records_total", topic="booking_owners")
        self.feed.own(booking_id, user_id)
        wait_for(lambda: self.metric("geodispatch_gateway_records_total", topic="booking_owners") > before,
                 timeout=10, interval=0.05, message=f"the gateway to read the owner of {booking_id}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Gateway:
    if not (CLIENTS / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("the Node clients are not installed: `make test` does it (npm ci --prefix tests/clients)",
                    pytrace=False)
    dep = Deployment(workdir=tmp_path_factory.mktemp("gateway"))
    background = BackgroundLoop()
    try:
        dep.apply_topics()
        worker = dep.start_gateway(SECRET, **GATEWAY_SETTINGS)
        feed = Feed(background, dep)
        try:
            worker.wait_answering()
            yield Gateway(dep, worker, feed, background)
        finally:
            feed.close()
    finally:
        background.close()
        dep.cleanup()


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def _paced(count: int, interval_s: float) -> Iterator[int]:
    """0 .. count - 1, each at its own time on a fixed schedule (however long the work between takes)."""
    start = time.monotonic()
    for n in range(count):
        time.sleep(max(0.0, start + n * interval_s - time.monotonic()))
        yield n


def _check_throttled_and_on_time(received: list[dict[str, Any]], sent: list[tuple[int, dict[str, Any]]],
                                 duration_s: float) -> None:
    """Every update received is one sent, in order, within ON_TIME_MS of its Kafka timestamp, at most
    MAX_PER_S a second, and the last one sent is the last one received."""
    order = [payload for _, payload in sent]
    indices = [order.index(event["data"]) for event in received]
    assert indices == sorted(set(indices)), f"out of order or repeated: {indices}"
    late = [(i, event["at"] - sent[i][0]) for i, event in zip(indices, received, strict=True)
            if event["at"] - sent[i][0] > ON_TIME_MS]
    assert not late, f"(update, ms from its Kafka timestamp) over {ON_TIME_MS} ms: {late}"
    gaps = [b["at"] - a["at"] for a, b in zip(received, received[1:], strict=False)]
    # The gateway spaces them 1/MAX_PER_S apart; the way to the client may shorten one gap by its jitter
    # (unthrottled, gaps would be 50 ms).
    assert min(gaps) >= 1000 / MAX_PER_S - 100, f"gaps (ms): {gaps}"
    assert duration_s * MAX_PER_S - 1 <= len(received) <= duration_s * MAX_PER_S + 1, f"{len(received)} received"
    assert indices[-1] == len(sent) - 1, "the last update sent was not the last received"


def test_an_owner_receives_its_bookings_tracking_on_time_at_the_throttled_rate_by_socketio_and_sse(gateway):
    booking, owner = _unique("b-rate"), _unique("u-rate")
    channel = f"booking.{booking}.tracking"
    gateway.owned(booking, owner)
    with gateway.follow(token(owner), channel) as by_socketio, \
            gateway.follow(token(owner), channel, transport="sse") as by_sse:
        for follower in (by_socketio, by_sse):
            assert follower.subscribed(channel)["ok"] is True, follower.transcript()
        # 20 a second: the one a throttled subscriber is given at the end of its interval is at most 50 ms
        # old when the interval ends.
        duration_s, per_s = 3, 20
        sent = []
        for step in _paced(duration_s * per_s, 1 / per_s):
            sent.append(gateway.feed.track(booking, "d-rate", step))
        last = sent[-1][1]
        for follower in (by_socketio, by_sse):
            follower.wait_for("message", channel, where=lambda e: e["data"] == last, timeout=3)
            _check_throttled_and_on_time(follower.messages(channel), sent, duration_s)
    assert gateway.metric("geodispatch_gateway_messages_throttled_total") > 0


def test_refused_for_a_booking_not_its_own_another_users_events_and_with_a_bad_token(gateway):
    booking, owner, stranger = _unique("b-own"), _unique("u-own"), _unique("u-stranger")
    gateway.owned(booking, owner)
    strangers_booking = _unique("b-other")
    gateway.owned(strangers_booking, stranger)
    mine, theirs, nobodys = (f"booking.{b}.tracking" for b in (booking, strangers_booking, _unique("b-none")))
    refused = {theirs: "forbidden", nobodys: "forbidden", f"user.{stranger}.events": "forbidden",
               "presence": "forbidden", "map": "forbidden", "booking.x.chat": "unknown_channel"}
    with gateway.follow(token(owner), mine, *refused) as by_socketio, \
            gateway.follow(token(owner, scopes=("user.*.events",)), mine) as out_of_scope:
        assert by_socketio.subscribed(mine)["ok"] is True
        for channel, error in refused.items():
            ack = by_socketio.subscribed(channel)
            assert ack["ok"] is False and ack["error"] == error and ack["channel"] == channel, ack
        ack = out_of_scope.subscribed(mine)
        assert ack["ok"] is False and ack["error"] == "forbidden", ack

    expired = token(owner, ttl_s=-5)
    foreign = token(owner, secret="a-secret-that-is-not-the-gateways-own")
    with gateway.follow(expired, mine) as late, gateway.follow(foreign, mine) as forged, \
            gateway.follow("", mine) as anonymous:
        for follower, message in ((late, "invalid_token"), (forged, "invalid_token"), (anonymous, "missing_token")):
            refusal = follower.wait_for("connect_error")["data"]
            assert refusal["message"] == message and set(refusal["data"]) >= {"error", "detail"}, refusal
            assert not follower.of("connect") and not follower.of("message")

    # The same by SSE: 403 for a channel the token may not follow, 401 for a token that is no good.
    with gateway.follow(token(owner), theirs, transport="sse") as forbidden, \
            gateway.follow(expired, mine, transport="sse") as late, \
            gateway.follow("", mine, transport="sse") as anonymous:
        for follower, channel, status in ((forbidden, theirs, 403), (late, mine, 401), (anonymous, mine, 401)):
            refusal = follower.wait_for("error", channel)["data"]
            assert refusal["status"] == status and set(refusal["body"]) >= {"error", "detail"}, refusal
            assert not follower.of("message")
        assert forbidden.of("error")[0]["data"]["body"]["error"] == "forbidden"
    status, _ = gateway.process.get(f"/realtime/booking.x.chat?token={token(owner)}")
    assert status == 404


def test_a_cut_client_reconnects_resubscribes_and_gets_the_last_known_location_first(gateway):
    booking, owner = _unique("b-cut"), _unique("u-cut")
    channel = f"booking.{booking}.tracking"
    gateway.owned(booking, owner)
    proxy = CuttingProxy("127.0.0.1", gateway.process.port)
    try:
        with gateway.follow(token(owner), channel, url=f"http://127.0.0.1:{proxy.port}") as follower:
            assert follower.subscribed(channel)["ok"] is True
            for step in range(2):
                _, update = gateway.feed.track(booking, "d-cut", step)
                follower.wait_for("message", channel, where=lambda e, u=update: e["data"] == u)
            cut_at = len(follower.events)
            proxy.cut_for(refuse_s=1.0)
            follower.wait_for("disconnect", since=cut_at)
            # Written while the client is away: the position it must be given first when it is back.
            _, missed = gateway.feed.track(booking, "d-cut", 2)
            back = follower.wait_for("connect", since=cut_at, timeout=10)
            again = follower.events.index(back)
            assert follower.of("connect_error", since=cut_at), "the proxy refused nobody: no back-off tried"
            assert follower.subscribed(channel, since=again)["ok"] is True
            first = follower.wait_for("message", channel, since=again)
            assert first["data"] == missed, follower.transcript()
            _, live = gateway.feed.track(booking, "d-cut", 3)
            follower.wait_for("message", channel, where=lambda e: e["data"] == live, since=again, timeout=3)
    finally:
        proxy.close()


def test_a_token_that_expires_ends_the_stream(gateway):
    booking, owner = _unique("b-exp"), _unique("u-exp")
    channel = f"booking.{booking}.tracking"
    gateway.owned(booking, owner)
    short = token(owner, ttl_s=3)
    expires_ms = jwt.decode(short, options={"verify_signature": False})["exp"] * 1000
    with gateway.follow(short, channel) as by_socketio, gateway.follow(short, channel, transport="sse") as by_sse:
        for follower in (by_socketio, by_sse):
            assert follower.subscribed(channel)["ok"] is True
            expired = follower.wait_for("expired", timeout=8)
            assert expired["data"] == {"reason": "token_expired"}
            assert expires_ms - 100 <= expired["at"] <= expires_ms + 1000, (expired["at"] - expires_ms)
        assert by_socketio.wait_for("disconnect")["data"]["reason"] == "io server disconnect"
        # EventSource tries again, with the token it has: refused, it stops.
        assert by_sse.wait_for("error", channel)["data"]["status"] == 401
        time.sleep(1.5)  # the back-off's longest wait: neither is back
        assert len(by_socketio.of("connect")) == 1 and len(by_sse.of("subscribed")) == 1


def test_a_driver_follows_a_booking_only_while_assigned_and_the_owner_hears_of_it(gateway):
    booking, owner, driver, other_driver = (_unique(name) for name in ("b-drv", "u-drv", "d-drv", "d-other"))
    channel = f"booking.{booking}.tracking"
    gateway.owned(booking, owner)
    driver_scopes = ("booking.*.tracking", f"user.{driver}.events")
    with gateway.follow(token(owner), f"user.{owner}.events") as owners_app, \
            gateway.follow(token(driver, "driver", driver_scopes), channel, f"user.{driver}.events") as before:
        assert owners_app.subscribed(f"user.{owner}.events")["ok"] is True
        assert before.subscribed(f"user.{driver}.events")["ok"] is True
        assert before.subscribed(channel)["error"] == "forbidden", "a driver followed a booking not assigned to it"

        gateway.feed.assign(booking, driver)
        status = owners_app.wait_for("message", f"user.{owner}.events")["data"]
        assert {key: status.get(key) for key in ("type", "booking_id", "status", "driver_id", "eta")} == {
            "type": "booking_status", "booking_id": booking, "status": "assigned", "driver_id": driver, "eta": 240}
        offer = before.wait_for("message", f"user.{driver}.events")["data"]
        assert {key: offer.get(key) for key in ("type", "booking_id", "driver_id", "eta")} == {
            "type": "assignment_offer", "booking_id": booking, "driver_id": driver, "eta": 240}
        _, position = gateway.feed.track(booking, driver, 0)

        with gateway.follow(token(driver, "driver", driver_scopes), channel) as assigned, \
                gateway.follow(token(other_driver, "driver"), channel) as not_assigned:
            assert assigned.subscribed(channel)["ok"] is True
            assert assigned.wait_for("message", channel)["data"] == position
            assert not_assigned.subscribed(channel)["error"] == "forbidden"

            gateway.feed.trip(booking, driver, "picked_up")
            owners_app.wait_for("message", f"user.{owner}.events", where=lambda e: e["data"]["status"] == "picked_up")
            assert not assigned.of("revoked"), "revoked at pick-up: the driver is still on the trip"
            gateway.feed.trip(booking, driver, "delivered")
            revoked = assigned.wait_for("revoked")
            assert revoked["channel"] == channel and revoked["data"]["reason"], revoked
            owners_app.wait_for("message", f"user.{owner}.events", where=lambda e: e["data"]["status"] == "delivered")
            after = len(assigned.events)
            gateway.feed.track(booking, driver, 1)
            time.sleep(1 / MAX_PER_S + 0.2)
            assert not assigned.messages(channel, since=after), "tracking still sent after the revocation"

        with gateway.follow(token(driver, "driver", driver_scopes), channel) as after_delivery:
            assert after_delivery.subscribed(channel)["error"] == "forbidden"


def test_support_follows_any_booking_with_a_token_of_the_gateways_command_and_is_audited(gateway):
    booking = _unique("b-support")
    channel = f"booking.{booking}.tracking"
    issued = gateway.dep.cli("gateway", "token", "--sub", "agent-7", "--role", "support", "--scopes",
                             "booking.*.tracking presence", GEODISPATCH_JWT_SECRET=SECRET).stdout.strip()
    _, position = gateway.feed.track(booking, "d-support", 0)
    with gateway.follow(issued, channel, "presence") as support:
        assert support.subscribed(channel)["ok"] is True and support.subscribed("presence")["ok"] is True
        assert support.wait_for("message", channel)["data"] == position
    audit = [line for line in gateway.process.log().splitlines() if "agent-7" in line and channel in line]
    assert audit, "no audit line for the support subscription"


def test_a_subscriber_that_stops_reading_is_dropped_and_the_others_stay_on_time(gateway):
    booking = _unique("b-slow")
    channel = f"booking.{booking}.tracking"
    support = token("ops-1", "support", ("booking.*.tracking", "presence"))
    # The flood and the booking on connections of their own: a burst ahead of an update on one connection
    # would delay that update by the burst's own delivery.
    with gateway.follow(support, "presence") as healthy, gateway.follow(support, channel) as tracker:
        assert healthy.subscribed("presence")["ok"] is True and tracker.subscribed(channel)["ok"] is True
        stalled = _stalled_sse(gateway.process.port, f"/realtime/presence?token={support}")
        stalled_socketio = _stalled_socketio(gateway.process.port, support, "presence")
        try:
            wait_for(lambda: gateway.metric("geodispatch_gateway_subscriptions", kind="presence") >= 3, timeout=5,
                     interval=0.05, message="the stalled streams' subscriptions")
            dropped_before = gateway.metric("geodispatch_gateway_dropped_subscribers_total", reason="slow_consumer")
            # 6000 presence changes over 3 s, in bursts of 500 that arrive in one fetch (a backlog, but a
            # young one: no slowness in a reader), and the booking's positions at 20 a second among them.
            steps, step_s, burst, steps_per_burst = 60, 0.05, 500, 5
            sent, flood = [], []
            for n in _paced(steps, step_s):
                if n % steps_per_burst == 0:
                    first = n // steps_per_burst * burst
                    changes = [(f"d-{i}", PresenceChanged(driver_id=f"d-{i}", online=i % 2 == 0, reason="status",
                                                          ts=datetime.now(UTC)))
                               for i in range(first, first + burst)]
                    gateway.feed.send_many(gateway.feed.names.presence, changes)
                    flood += changes
                sent.append(gateway.feed.track(booking, "d-slow", n))
            last_change = json.loads(default_codec().encode(flood[-1][1]))
            healthy.wait_for("message", "presence", where=lambda e: e["data"] == last_change, timeout=10)
            tracker.wait_for("message", channel, where=lambda e: e["data"] == sent[-1][1], timeout=3)
            _check_throttled_and_on_time(tracker.messages(channel), sent, steps * step_s)
            assert len(healthy.messages("presence")) == len(flood) and not healthy.of("disconnect")
            assert not tracker.of("disconnect")

            assert gateway.metric("geodispatch_gateway_dropped_subscribers_total",
                                  reason="slow_consumer") > dropped_before
            assert _drain(stalled).startswith(b"HTTP/1.1 200")
            assert _drain(stalled_socketio).startswith(b"HTTP/1.1 101")
            dropped = [json.loads(line) for line in gateway.process.log().splitlines()
                       if '"subscriber_dropped"' in line and '"ops-1"' in line]
            assert sorted((line["reason"], line["transport"]) for line in dropped) == [
                ("slow_consumer", "socketio"), ("slow_consumer", "sse")], dropped
        finally:
            stalled.close()
            stalled_socketio.close()


def _stalled_sse(port: int, path: str) -> socket.socket:
    """An SSE request from a socket that nobody reads, over what looks like a thin link: a tiny receive
    window, and the smallest segments (on loopback's 64 kB ones, the server's kernel would size its send
    buffer to megabytes, and take a long flood before the gateway itself saw a backlog)."""
    stalled = socket.socket()
    # Both before connect: the window and the segment size are offered in the handshake.
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stalled.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    return stalled


def _stalled_socketio(port: int, token: str, channel: str) -> socket.socket:
    """A Socket.IO client on the WebSocket transport, spoken by hand (engine.io 4, the socket.io
    protocol 5) over the same thin link as _stalled_sse: it connects, subscribes, and never reads
    again."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stalled.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    stalled.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    stalled.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    for packet in ("40" + json.dumps({"token": token}), "420" + json.dumps(["subscribe", {"channel": channel}])):
        stalled.sendall(_masked_text_frame(packet.encode()))
    return stalled


def _masked_text_frame(payload: bytes) -> bytes:
    """One WebSocket text frame as a client sends it (masked, RFC 6455 5.3)."""
    mask = os.urandom(4)
    length = len(payload)
    size = bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + length.to_bytes(2, "big")
    header = bytes([0x81]) + size
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def _drain(stalled: socket.socket, timeout: float = 10.0) -> bytes:
    """What the server sent, read to the end of the connection (closed or reset): a stream still open
    fails the test."""
    stalled.settimeout(timeout)
    chunks = []
    try:
        while chunk := stalled.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the stalled stream was not closed by the gateway ({sum(map(len, chunks))} bytes read)")\
            from None
    return b"".join(chunks)



def test_a_gateway_started_later_knows_the_bookings_owners_drivers_and_last_locations(gateway):
    """What a restart rebuilds from the topics (docs/GATEWAY.md): the owner from booking_owners, the
    driver from the answer, the last known location from booking_tracking's look-back."""
    booking, owner, driver = _unique("b-restart"), _unique("u-restart"), _unique("d-restart")
    channel = f"booking.{booking}.tracking"
    gateway.owned(booking, owner)
    gateway.feed.assign(booking, driver)
    last = [gateway.feed.track(booking, driver, step)[1] for step in range(3)][-1]
    later = gateway.dep.start_gateway(SECRET, name="gateway-later", **GATEWAY_SETTINGS)
    later.wait_answering()
    wait_for(lambda: later.get("/health")[0] == 200, timeout=30, interval=0.1,
             message="the later gateway to read the topics' state")
    drivers_token = token(driver, "driver", (channel,))
    with gateway.follow(token(owner), channel, url=later.url("")) as owners_app, \
            gateway.follow(drivers_token, channel, transport="sse", url=later.url("")) as drivers_app:
        for app in (owners_app, drivers_app):
            assert app.subscribed(channel)["ok"] is True, app.transcript()
            assert app.wait_for("message", channel)["data"] == last
