"""The sessions API as a process of its own (`geodispatch worker --roles api`): the same answers as the
worker's views (streams.answers), from the shared Redis index, on a plain aiohttp server with no
stream processor beside it. Any number of them serve one deployment: HTTP load then never slows the
processing of pings and requests, and a backlog of pings never slows an answer."""

from __future__ import annotations

import asyncio

import orjson
import structlog
from aiohttp import web

from consumers.supply_demand import FeedFollower
from infra.auth import Verifier
from infra.settings import Settings
from streams import answers
from streams.access import token_gate
from streams.answers import PREFIX, SUPPLY_DEMAND_PATH, Answer, timed
from streams.index import RegionIndex
from streams.metrics import Metrics

log = structlog.get_logger(__name__)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, method not allowed) as JSON too, like every answer of ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.Response(body=orjson.dumps({"error": exc.reason, "path": request.path}), status=exc.status,
                            content_type="application/json", headers={k: v for k, v in exc.headers.items()
                                                                      if k.lower() == "allow"})


def _json(answer: Answer) -> web.Response:
    body, status = answer
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def build_api(settings: Settings, index: RegionIndex, metrics: Metrics, verifier: Verifier | None) -> web.Application:
    """The API's aiohttp application: the sessions routes, /health (Redis only: this process uses no
    Kafka, but to follow the supply/demand feed) with its probes /health/live and /health/ready, and
    /metrics, behind the same token gate as the worker's."""

    async def nearby(request: web.Request) -> web.Response:
        answering = answers.nearby_answer(index, settings.location_max_age_s, request.query)
        return _json(await timed(metrics, "nearby", answering))

    async def session(request: web.Request) -> web.Response:
        return _json(await timed(metrics, "session", answers.session_answer(index, request.match_info["driver_id"])))

    follower = FeedFollower(settings)

    async def supply_demand(request: web.Request) -> web.Response:
        answering = answers.supply_demand_answer(follower, settings.supply_demand_resolution,
                                                 settings.supply_demand_window_s, request.query)
        return _json(await timed(metrics, "supply_demand", answering))

    async def health(request: web.Request) -> web.Response:
        return _json(await timed(metrics, "health", answers.health_answer({"redis": answers.redis_reachable(index)})))

    async def live(request: web.Request) -> web.Response:
        return _json(await timed(metrics, "health_live", answers.live_answer()))

    async def ready(request: web.Request) -> web.Response:
        # What the sessions routes need: the index. The feed's topic is read on the first question.
        checks = {"redis": answers.redis_reachable(index)}
        return _json(await timed(metrics, "health_ready", answers.health_answer(checks, "ready", "not_ready")))

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=answers.metrics_text(metrics), content_type=answers.METRICS_CONTENT_TYPE)

    async def close_redis(app: web.Application) -> None:
        await follower.close()
        await index.aclose()

    gate = token_gate(verifier, lambda status: metrics.http_refused.labels(status=str(status)).inc())
    app = web.Application(middlewares=[json_errors, gate])
    # /nearby before the {driver_id} route, which would otherwise match "nearby" too.
    app.router.add_get(f"{PREFIX}/nearby", nearby)
    app.router.add_get(PREFIX + "/{driver_id}", session)
    app.router.add_get(SUPPLY_DEMAND_PATH, supply_demand)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics_page)
    app.on_cleanup.append(close_redis)
    return app


def serve(settings: Settings) -> None:
    """Runs the API until SIGINT or SIGTERM."""
    verifier = Verifier.from_settings(settings)  # settings that cannot work stop the process here
    if settings.event_loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    index = RegionIndex.from_settings(settings)
    app = build_api(settings, index, Metrics(), verifier)
    log.info("api_serving", host=settings.web_host, port=settings.web_port, open=verifier is None)
    web.run_app(app, host=settings.web_host, port=settings.web_port, loop=loop, print=None, access_log=None)
