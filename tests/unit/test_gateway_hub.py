"""The hub in one event loop, with transports that record what they are sent: a slow connection is
dropped (by the age of its backlog, or its size) and the others keep their pace, and a burst is no
slowness; a throttled channel ends on the newest update; a token's
expiry ends its connection."""

from __future__ import annotations

import asyncio
import time

from consumers.gateway.channels import Subscriber, parse_channel
from consumers.gateway.hub import SLOW_CONSUMER, TOKEN_EXPIRED, Hub
from consumers.gateway.metrics import GatewayMetrics


class Transport:
    def __init__(self, stalled: bool = False) -> None:
        self.received: list[tuple[str, object]] = []
        self.closed: str | None = None
        self._stalled = stalled

    async def send(self, event: str, payload: object) -> None:
        if self._stalled:
            await asyncio.Event().wait()  # a peer that never reads
        self.received.append((event, payload))

    async def close(self, reason: str) -> None:
        self.closed = reason


def hub(queue_limit: int = 1000, send_timeout_s: float = 0.05, max_per_s: float = 1000.0) -> Hub:
    return Hub(GatewayMetrics(), queue_limit=queue_limit, send_timeout_s=send_timeout_s,
               tracking_max_per_s=max_per_s, leeway_s=0)


def connect(the_hub: Hub, transport: Transport, channel: str, expires_in_s: float = 3600):
    subscriber = Subscriber("ops", "support", ("*",), expires_at=time.time() + expires_in_s)
    connection = the_hub.connect(subscriber, "test", transport.send, transport.close)
    the_hub.subscribe(connection, parse_channel(channel))
    return connection


async def test_a_slow_connection_is_dropped_and_the_others_keep_receiving():
    the_hub, slow, quick = hub(), Transport(stalled=True), Transport()
    connect(the_hub, slow, "presence")
    connect(the_hub, quick, "presence")
    for n in range(20):
        the_hub.publish("presence", {"n": n})
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)
    assert slow.closed == SLOW_CONSUMER
    assert [payload["n"] for _, payload in quick.received] == list(range(20))
    assert the_hub.metrics.dropped.labels(SLOW_CONSUMER)._value.get() == 1
    assert len(the_hub.listeners("presence")) == 1


async def test_a_burst_is_no_slowness():
    the_hub, transport = hub(queue_limit=1000), Transport()
    connect(the_hub, transport, "presence")
    for n in range(500):  # what one fetch of many records publishes before any send runs
        the_hub.publish("presence", {"n": n})
    await asyncio.sleep(0.05)
    assert transport.closed is None and len(transport.received) == 500


async def test_a_queue_at_its_limit_is_dropped_however_young():
    the_hub, slow = hub(queue_limit=10, send_timeout_s=60), Transport(stalled=True)
    connect(the_hub, slow, "presence")
    for n in range(12):
        the_hub.publish("presence", {"n": n})
    await asyncio.sleep(0.01)
    assert slow.closed == SLOW_CONSUMER


async def test_a_throttled_channel_sends_at_its_rate_and_ends_on_the_newest():
    the_hub, transport = hub(max_per_s=10), Transport()
    connect(the_hub, transport, "booking.b1.tracking")
    for n in range(10):
        the_hub.publish("booking.b1.tracking", {"n": n})
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.15)
    sent = [payload["n"] for _, payload in transport.received]
    assert sent[0] == 0 and sent[-1] == 9
    assert 2 <= len(sent) <= 4


async def test_an_expired_token_ends_the_connection():
    the_hub, transport = hub(), Transport()
    connect(the_hub, transport, "map", expires_in_s=0.05)
    await asyncio.sleep(0.15)
    assert transport.closed == TOKEN_EXPIRED
    assert the_hub.connections == set()


async def test_a_driver_no_longer_assigned_is_revoked():
    the_hub, transport = hub(), Transport()
    driver = Subscriber("d1", "driver", ("*",), expires_at=time.time() + 60)
    connection = the_hub.connect(driver, "test", transport.send, transport.close)
    the_hub.subscribe(connection, parse_channel("booking.b1.tracking"))
    the_hub.revoke("booking.b1.tracking", "d1", "trip_delivered")
    the_hub.publish("booking.b1.tracking", {"n": 1})
    await asyncio.sleep(0.01)
    assert transport.received == [("revoked", {"channel": "booking.b1.tracking", "reason": "trip_delivered"})]
