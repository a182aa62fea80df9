"""The gateway's HTTP side: Socket.IO (python-socketio, what seed 004's clients speak) and SSE at
/realtime/{channel} on one aiohttp server, the live map's static page, /health (and its probes
/health/live and /health/ready), /stats and /metrics.

A token is checked when a connection opens and again for every subscription (its claims name the
caller); the connection ends when the token expires. Connections and subscriptions are refused with a
reason until the feed has read what the topics held at the start (consumers.gateway.feed)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import socketio
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumers.gateway.channels import (
    Channel,
    Refused,
    Subscriber,
    check_subscription,
    parse_channel,
    subscriber_from_claims,
)
from consumers.gateway.city import City
from consumers.gateway.feed import Feed
from consumers.gateway.hub import SLOW_CONSUMER, TOKEN_EXPIRED, Connection, Hub
from consumers.gateway.metrics import GatewayMetrics
from infra.auth import AuthError, Verifier
from infra.settings import Settings
from schemas.codec import default_codec

log = structlog.get_logger(__name__)
audit = structlog.get_logger("geodispatch.audit")

STATIC_DIR = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
SWEEP_INTERVAL_S = 5.0
# How long a goodbye (an expired token's) may wait for the client to take it before the connection is cut.
DISCONNECT_TIMEOUT_S = 5.0
# SSE clients wait this long before reconnecting (the `retry` field).
SSE_RETRY_MS = 1000


class Unavailable(Exception):
    """The gateway is starting: it has not read the topics' current state yet."""


class Gateway:
    def __init__(self, settings: Settings, verifier: Verifier) -> None:
        self.settings = settings
        # The sessions API's required scope (jwt_scope) is not the gateway's: channels are its scopes.
        self._verifier = dataclasses.replace(verifier, scope=None)
        self.metrics = GatewayMetrics()
        self.hub = Hub(self.metrics, settings.gateway_queue_limit, settings.gateway_send_timeout_s,
                       settings.tracking_max_per_s, settings.jwt_leeway_s)
        self.city = City(keep_ended_s=settings.gateway_lookback_s, driver_max_age_s=settings.location_max_age_s)
        self.feed = Feed(settings, default_codec(settings.schema_registry_url), self.city, self.hub)
        self.sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", logger=False,
                                        engineio_logger=False)
        self._sessions: dict[str, Connection] = {}
        self._upgrades: dict[str, asyncio.Transport] = {}
        self.failed = False
        self._register_socketio_handlers()

    # -- access ----------------------------------------------------------------------------------

    def authenticate(self, token: str | None, transport: str) -> Subscriber:
        """The caller of a token, or AuthError (401); Unavailable while starting."""
        if not self.feed.caught_up.is_set():
            self.metrics.connects_refused.labels(transport, "unavailable").inc()
            raise Unavailable("the gateway is starting; try again shortly")
        try:
            if not token:
                raise AuthError(401, "missing_token", "a token is required (auth.token, ?token= or a bearer header)")
            claims = self._verifier.verify(token)
            try:
                return subscriber_from_claims(claims)
            except Refused as exc:
                raise AuthError(401, exc.error, exc.detail) from None
        except AuthError as exc:
            self.metrics.connects_refused.labels(transport, exc.error).inc()
            log.info("gateway_connect_refused", transport=transport, error=exc.error, detail=exc.description)
            raise

    def admit(self, subscriber: Subscriber, name: object, transport: str) -> Channel:
        """The channel, when this subscriber may follow it; Refused otherwise."""
        try:
            channel = parse_channel(name)
            booking = self.city.booking(channel.subject) if channel.kind == "tracking" and channel.subject else None
            check_subscription(subscriber, channel, booking)
        except Refused as exc:
            self.metrics.subscribes_refused.labels(exc.error).inc()
            log.info("gateway_subscribe_refused", user_id=subscriber.user_id, role=subscriber.role,
                     channel=str(name)[:300], error=exc.error, detail=exc.detail, transport=transport)
            raise
        if subscriber.backoffice:
            self.metrics.audited.labels(subscriber.role).inc()
            audit.info("backoffice_subscription", user_id=subscriber.user_id, role=subscriber.role,
                       channel=channel.name, transport=transport)
        return channel

    def subscribe(self, connection: Connection, channel: Channel) -> None:
        self.hub.subscribe(connection, channel)
        if channel.kind == "tracking" and (last := self.city.last_location(channel.subject or "")) is not None:
            connection.deliver_now(channel.name, last)

    # -- Socket.IO ------------------------------------------------------------------------------

    def _register_socketio_handlers(self) -> None:
        sio = self.sio

        @sio.event
        async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
            try:
                subscriber = self.authenticate(_socketio_token(environ, auth), "socketio")
            except AuthError as exc:
                raise socketio.exceptions.ConnectionRefusedError(exc.error, {"error": exc.error,
                                                                             "detail": exc.description}) from None
            except Unavailable as exc:
                raise socketio.exceptions.ConnectionRefusedError("unavailable", {"error": "unavailable",
                                                                                 "detail": str(exc)}) from None
            self._sessions[sid] = self.hub.connect(
                subscriber, "socketio", send=lambda event, payload: sio.emit(event, payload, to=sid),
                close=lambda reason: self._end_socketio(sid, reason), drained=lambda: self._engineio_drained(sid))

        @sio.event
        async def subscribe(sid: str, data: Any = None) -> dict[str, Any]:
            connection = self._sessions.get(sid)
            name = data.get("channel") if isinstance(data, dict) else data
            if connection is None or connection.closing:
                return {"ok": False, "channel": name, "error": "invalid_request", "detail": "not connected"}
            try:
                channel = self.admit(connection.subscriber, name, "socketio")
            except Refused as exc:
                return {"ok": False, "channel": name, "error": exc.error, "detail": exc.detail}
            self.subscribe(connection, channel)
            return {"ok": True, "channel": channel.name}

        @sio.event
        async def unsubscribe(sid: str, data: Any = None) -> dict[str, Any]:
            name = data.get("channel") if isinstance(data, dict) else data
            if (connection := self._sessions.get(sid)) is not None and isinstance(name, str):
                self.hub.unsubscribe(connection, name)
            return {"ok": True, "channel": name}

        @sio.event
        async def disconnect(sid: str, *reason: Any) -> None:
            if (connection := self._sessions.pop(sid, None)) is not None:
                connection.end("client_disconnected")

    async def _engineio_drained(self, sid: str) -> None:
        """Waits until python-engineio's writer has taken every packet queued for this session: an emit
        only queues, so without this a client that does not read would pile packets up there, out of
        sight of the connection's own queue and its slowness check."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        socket = self.sio.eio.sockets.get(eio_sid) if eio_sid else None
        if socket is not None:
            await socket.queue.join()

    async def _end_socketio(self, sid: str, reason: str) -> None:
        self._sessions.pop(sid, None)
        if reason == "client_disconnected":
            return
        websocket = self._websocket_of(sid)
        if reason == SLOW_CONSUMER and websocket is not None:
            # A reset, not a goodbye that would wait behind what the client does not read: Socket.IO
            # clients reconnect by themselves (with back-off) after a lost transport, not after the
            # server's disconnect, and then get the last known location first.
            websocket.abort()
            return
        if reason == TOKEN_EXPIRED:
            await self.sio.emit("expired", {"reason": reason}, to=sid)
        try:
            await asyncio.wait_for(self.sio.disconnect(sid), DISCONNECT_TIMEOUT_S)
        except TimeoutError:
            if websocket is not None:
                websocket.abort()

    def _websocket_of(self, sid: str) -> asyncio.Transport | None:
        """The TCP connection of a session on the WebSocket transport: the request that upgraded it from
        long-polling, or the one it connected with directly; None on long-polling, where nothing waits
        for a client that does not poll."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid in self._upgrades:
            return self._upgrades[eio_sid]
        request = (self.sio.get_environ(sid) or {}).get("aiohttp.request")
        if request is not None and request.query.get("transport") == "websocket":
            return request.transport
        return None

    @web.middleware
    async def _remember_upgrades(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Keeps the connection of each long-polling session upgraded to WebSocket, for _websocket_of."""
        eio_sid = request.query.get("sid")
        if not (request.path.startswith("/socket.io/") and request.query.get("transport") == "websocket"
                and eio_sid and request.transport is not None):
            return await handler(request)
        self._upgrades[eio_sid] = request.transport
        try:
            return await handler(request)
        finally:
            self._upgrades.pop(eio_sid, None)

    # -- SSE ------------------------------------------------------------------------------------

    async def sse(self, request: web.Request) -> web.StreamResponse:
        try:
            subscriber = self.authenticate(_bearer_or_query_token(request), "sse")
            channel = self.admit(subscriber, request.match_info["channel"], "sse")
        except Unavailable as exc:
            return _json({"error": "unavailable", "detail": str(exc)}, 503, {"Retry-After": "1"})
        except AuthError as exc:
            return _json(exc.body(), exc.status, {"WWW-Authenticate": exc.www_authenticate})
        except Refused as exc:
            status = {"unknown_channel": 404, "invalid_request": 400}.get(exc.error, 403)
            return _json({"error": exc.error, "detail": exc.detail}, status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
        ended = asyncio.Event()
        sequence = 0

        async def send(event: str, payload: Any) -> None:
            nonlocal sequence
            if event == KEEPALIVE:
                await response.write(b": keepalive\n\n")
                return
            if event == "revoked":
                await response.write(b"event: revoked\ndata: " + orjson.dumps(payload) + b"\n\n")
                connection.end("revoked")
                return
            sequence += 1
            await response.write(b"id: %d\ndata: %s\n\n" % (sequence, orjson.dumps(payload)))

        async def close(reason: str) -> None:
            if reason == TOKEN_EXPIRED:
                # The stream ends anyway when the client cannot take the last word.
                with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                    await asyncio.wait_for(response.write(b"event: expired\ndata: " +
                                                          orjson.dumps({"reason": reason}) + b"\n\n"), 1.0)
            elif reason == SLOW_CONSUMER and request.transport is not None:
                # A slow reader: what is buffered for it would never drain; cut it.
                request.transport.abort()
            ended.set()

        connection = self.hub.connect(subscriber, "sse", send, close)
        self.subscribe(connection, channel)
        try:
            while not ended.is_set():
                try:
                    await asyncio.wait_for(ended.wait(), KEEPALIVE_S)
                except TimeoutError:
                    connection.deliver_now(KEEPALIVE, None)
        finally:
            connection.end("client_gone")
        return response

    # -- the rest -------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        ready = self.feed.caught_up.is_set()
        return _json({"status": "ok" if ready else "starting"}, 200 if ready else 503)

    async def live(self, request: web.Request) -> web.Response:
        """The liveness probe: the event loop answers (a broker outage must not restart the gateway:
        its feed reconnects by itself, docs/OBSERVABILITY.md)."""
        return _json({"status": "alive"}, 200)

    async def ready(self, request: web.Request) -> web.Response:
        """The readiness probe: the feed has read what the topics held at the start, so connections
        are admitted (until then they are refused as `unavailable`)."""
        ready = self.feed.caught_up.is_set()
        return _json({"status": "ready" if ready else "not_ready", "caught_up": ready}, 200 if ready else 503)

    async def stats(self, request: web.Request) -> web.Response:
        by_transport: dict[str, int] = {}
        for connection in self.hub.connections:
            by_transport[connection.transport] = by_transport.get(connection.transport, 0) + 1
        return _json({
            "caught_up": self.feed.caught_up.is_set(),
            "connections": by_transport,
            "bookings": len(self.city.bookings),
            "drivers_on_map": len(self.city.drivers),
            "delivery_seconds": self.metrics.recent_delivery.percentiles(0.5, 0.95, 0.99),
        }, 200)

    async def metrics_view(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def map_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/map/")

    async def map_page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._remember_upgrades])
        self.sio.attach(app)
        app.router.add_get("/realtime/{channel}", self.sse)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health/live", self.live)
        app.router.add_get("/health/ready", self.ready)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/metrics", self.metrics_view)
        app.router.add_get("/map", self.map_redirect)
        app.router.add_get("/map/", self.map_page)
        app.router.add_static("/map/", STATIC_DIR)
        app.on_startup.append(self._start_background)
        app.on_shutdown.append(self._stop_background)
        return app

    async def _start_background(self, app: web.Application) -> None:
        self._background = [asyncio.create_task(self._run_feed(), name="gateway-feed"),
                            asyncio.create_task(self._every(self.settings.gateway_map_interval_s, self._map_tick),
                                                name="gateway-map"),
                            asyncio.create_task(self._every(SWEEP_INTERVAL_S, self._sweep), name="gateway-sweep")]

    async def _stop_background(self, app: web.Application) -> None:
        self.hub.close_all("shutdown")
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _run_feed(self) -> None:
        try:
            await self.feed.run()
        except Exception as exc:
            # Without its topics the gateway serves nothing true: stop, for the supervisor to restart it.
            log.critical("gateway_feed_failed", error=f"{type(exc).__name__}: {exc}")
            self.failed = True
            os.kill(os.getpid(), signal.SIGTERM)

    @staticmethod
    async def _every(interval_s: float, work: Any) -> None:
        while True:
            await asyncio.sleep(interval_s)
            work()

    def _map_tick(self) -> None:
        if self.hub.listeners("map"):
            self.hub.publish("map", self.city.map_snapshot(time.time()))

    def _sweep(self) -> None:
        self.city.forget_old(time.time())


KEEPALIVE = ":keepalive"


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def _socketio_token(environ: dict[str, Any], auth: Any) -> str | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return auth["token"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if query.get("token"):
        return query["token"][0]
    return _bearer(environ.get("HTTP_AUTHORIZATION"))


def _bearer_or_query_token(request: web.Request) -> str | None:
    return request.query.get("token") or _bearer(request.headers.get("Authorization"))


def _bearer(header: str | None) -> str | None:
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def serve(settings: Settings, host: str, port: int) -> None:
    verifier = Verifier.from_settings(settings)
    if verifier is None:
        raise SystemExit("the gateway needs GEODISPATCH_JWT_SECRET or GEODISPATCH_JWT_PUBLIC_KEY: every "
                         "subscriber is checked")
    gateway = Gateway(settings, verifier)
    # The libraries' objects live as long as the process: frozen, no collection walks them again. A young
    # generation of 100,000 allocations rather than 700: a message lives for milliseconds, and collected
    # that often some are always in flight, survive, and fill the old generation, whose full collections
    # walk every subscriber's objects while every connection waits (docs/GATEWAY.md, Sizing).
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 10)
    gateway.metrics.watch_garbage_collections()
    log.info("gateway_starting", host=host, port=port, topic_prefix=settings.topic_prefix)
    # No access log: SSE URLs carry the token in their query (browsers cannot set headers on EventSource).
    web.run_app(gateway.application(), host=host, port=port, print=None, handle_signals=True, access_log=None)
    if gateway.failed:
        raise SystemExit(1)
