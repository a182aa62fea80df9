"""Who listens to what, and delivery to each listener at its own pace, whatever its transport.

Each connection (a Socket.IO session or an SSE stream) has a queue of its own and a task that sends
from it, waiting for its transport to take each message, so a slow listener only ever waits on itself.
Slowness is judged by time, not by a count at one instant (a burst of records read in one fetch would
look like a backlog): a connection whose oldest waiting message has waited `send_timeout_s`, or whose
queue reaches `queue_limit` (the memory bound), is disconnected with the reason `slow_consumer`.
Tracking channels are throttled per connection (consumers.gateway.throttle)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from consumers.gateway.channels import Channel, Subscriber
from consumers.gateway.metrics import GatewayMetrics
from consumers.gateway.throttle import Throttle

log = structlog.get_logger(__name__)

# A message ready to go: the channel (the event name on Socket.IO), its payload, when its record was
# written to Kafka (epoch s, for the delivery latency; None for what the gateway made itself), and when
# it was queued (monotonic s).
Outgoing = tuple[str, Any, float | None, float]
Send = Callable[[str, Any], Awaitable[None]]
Close = Callable[[str], Awaitable[None]]
Drained = Callable[[], Awaitable[None]]


async def _taken_at_once() -> None:
    """A transport whose send returns once the message is written (SSE) has nothing more to wait for."""

SLOW_CONSUMER = "slow_consumer"
TOKEN_EXPIRED = "token_expired"


class Connection:
    """One client connection: its subscriptions, its queue and the task sending from it."""

    def __init__(self, hub: Hub, subscriber: Subscriber, transport: str, send: Send, close: Close,
                 drained: Drained = _taken_at_once) -> None:
        self.hub = hub
        self.subscriber = subscriber
        self.transport = transport
        self._send = send
        self._close = close
        self._drained = drained
        self.channels: dict[str, Channel] = {}
        self._throttles: dict[str, Throttle] = {}
        self._flushes: dict[str, asyncio.TimerHandle] = {}
        self._queue: deque[Outgoing] = deque()
        self._waiting = asyncio.Event()
        self.closing: str | None = None
        self._sender = asyncio.create_task(self._send_all(), name=f"gateway-send-{subscriber.user_id}")
        self._expiry = asyncio.get_running_loop().call_at(
            _loop_time_of(subscriber.expires_at + hub.leeway_s), self.end, TOKEN_EXPIRED)

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def deliver(self, channel: str, payload: Any, written_at: float | None) -> None:
        """Queues a message, through the channel's throttle when it has one."""
        if self.closing:
            return
        throttle = self._throttles.get(channel)
        if throttle is not None:
            ready = throttle.offer((payload, written_at), time.monotonic())
            if ready is None:
                self.hub.metrics.throttled.inc()
                self._schedule_flush(channel, throttle)
                return
            payload, written_at = ready
        self._enqueue(channel, payload, written_at)

    def deliver_now(self, channel: str, payload: Any) -> None:
        """Queues a message past the throttle (the last known location on subscribing)."""
        if not self.closing:
            self._enqueue(channel, payload, None)

    def _enqueue(self, channel: str, payload: Any, written_at: float | None) -> None:
        now = time.monotonic()
        if self._queue and (len(self._queue) >= self.hub.queue_limit
                            or now - self._queue[0][3] >= self.hub.send_timeout_s):
            self.end(SLOW_CONSUMER)
            return
        self._queue.append((channel, payload, written_at, now))
        self._waiting.set()

    def _schedule_flush(self, channel: str, throttle: Throttle) -> None:
        if channel in self._flushes:
            return
        self._flushes[channel] = asyncio.get_running_loop().call_at(
            _loop_time_of_monotonic(throttle.due_at()), self._flush, channel)

    def _flush(self, channel: str) -> None:
        self._flushes.pop(channel, None)
        throttle = self._throttles.get(channel)
        ready = throttle.take_due(time.monotonic()) if throttle else None
        if ready is not None:
            payload, written_at = ready
            self._enqueue(channel, payload, written_at)

    def track(self, channel: Channel) -> None:
        self.channels[channel.name] = channel
        if channel.kind == "tracking":
            self._throttles[channel.name] = Throttle.per_second(self.hub.tracking_max_per_s)

    def untrack(self, name: str) -> None:
        self.channels.pop(name, None)
        self._throttles.pop(name, None)
        if (flush := self._flushes.pop(name, None)) is not None:
            flush.cancel()

    async def _send_all(self) -> None:
        metrics = self.hub.metrics
        while True:
            if not self._queue:
                self._waiting.clear()
                await self._waiting.wait()
                continue
            channel, payload, written_at, _ = self._queue[0]
            try:
                await self._send(channel, payload)
                await self._drained()
            except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-write
                self.end(f"send_failed: {type(exc).__name__}")
                return
            self._queue.popleft()
            kind = self.channels[channel].kind if channel in self.channels else "control"
            metrics.sent.labels(kind).inc()
            if written_at is not None:
                latency = max(0.0, time.time() - written_at)
                metrics.delivery.observe(latency)
                metrics.recent_delivery.observe(latency)

    def end(self, reason: str) -> None:
        """Ends the connection once, for a reason the logs and metrics give (slow, expired, ...)."""
        if self.closing:
            return
        self.closing = reason
        self.hub.forget(self)
        self._expiry.cancel()
        for flush in self._flushes.values():
            flush.cancel()
        self._sender.cancel()
        if reason in (SLOW_CONSUMER, TOKEN_EXPIRED):
            self.hub.metrics.dropped.labels(reason).inc()
            log.warning("subscriber_dropped", reason=reason, user_id=self.subscriber.user_id,
                        role=self.subscriber.role, transport=self.transport, channels=sorted(self.channels),
                        backlog=self.backlog)
        self.hub.spawn(self._close(reason))


def _loop_time_of(epoch_s: float) -> float:
    return asyncio.get_running_loop().time() + (epoch_s - time.time())


def _loop_time_of_monotonic(monotonic_s: float) -> float:
    return asyncio.get_running_loop().time() + (monotonic_s - time.monotonic())


class Hub:
    """Every connection and the channels each follows; publishing goes to a channel's connections."""

    def __init__(self, metrics: GatewayMetrics, queue_limit: int, send_timeout_s: float, tracking_max_per_s: float,
                 leeway_s: float) -> None:
        self.metrics = metrics
        self.queue_limit = queue_limit
        self.send_timeout_s = send_timeout_s
        self.tracking_max_per_s = tracking_max_per_s
        self.leeway_s = leeway_s
        self._listeners: dict[str, set[Connection]] = defaultdict(set)
        self.connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def connect(self, subscriber: Subscriber, transport: str, send: Send, close: Close,
                drained: Drained = _taken_at_once) -> Connection:
        connection = Connection(self, subscriber, transport, send, close, drained)
        self.connections.add(connection)
        self.metrics.connections.labels(transport).inc()
        return connection

    def subscribe(self, connection: Connection, channel: Channel) -> None:
        if channel.name in connection.channels:
            return
        connection.track(channel)
        self._listeners[channel.name].add(connection)
        self.metrics.subscriptions.labels(channel.kind).inc()

    def unsubscribe(self, connection: Connection, name: str) -> None:
        channel = connection.channels.get(name)
        if channel is None:
            return
        connection.untrack(name)
        self._drop_listener(name, connection)
        self.metrics.subscriptions.labels(channel.kind).dec()

    def _drop_listener(self, name: str, connection: Connection) -> None:
        listeners = self._listeners.get(name)
        if listeners is not None:
            listeners.discard(connection)
            if not listeners:
                del self._listeners[name]

    def forget(self, connection: Connection) -> None:
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        self.metrics.connections.labels(connection.transport).dec()
        for name, channel in list(connection.channels.items()):
            self._drop_listener(name, connection)
            self.metrics.subscriptions.labels(channel.kind).dec()

    def listeners(self, name: str) -> tuple[Connection, ...]:
        return tuple(self._listeners.get(name, ()))

    def publish(self, channel: str, payload: Any, written_at: float | None = None) -> None:
        for connection in self.listeners(channel):
            connection.deliver(channel, payload, written_at)

    def revoke(self, channel: str, driver: str, reason: str) -> None:
        """Ends the subscriptions of a driver no longer assigned to the channel's booking, telling it."""
        for connection in self.listeners(channel):
            subscriber = connection.subscriber
            if subscriber.role == "driver" and subscriber.user_id == driver:
                self.unsubscribe(connection, channel)
                connection.deliver_now("revoked", {"channel": channel, "reason": reason})

    def spawn(self, work: Awaitable[Any]) -> None:
        """Runs a coroutine in the background, kept referenced until it ends."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close_all(self, reason: str) -> None:
        for connection in list(self.connections):
            connection.end(reason)
