"""The HTTP gate: with a JWT secret or public key configured, every route of the worker's web server
needs a valid bearer token, except the few that probes and scrapers must reach without one.

It is an aiohttp middleware rather than a decorator on our views, so that a route nobody thought of
(faust's own table and router views, a page added later) is closed by default instead of open."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
import structlog
from aiohttp import web

from infra.auth import AuthError, Verifier

log = structlog.get_logger(__name__)

# Open without a token: the health probes (say only whether the process, Kafka and Redis answer) and the two
# scrapers' endpoints (counters and latency percentiles, no driver, order or location data). An
# orchestrator's probe or a Prometheus server seldom carries a bearer token.
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/stats", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_gate(verifier: Verifier | None, on_refused: Callable[[int], None]) -> Callable:
    """The middleware: every request but those to OPEN_PATHS passes `verifier`'s check first (or all
    pass when `verifier` is None, the API being open by configuration). A refusal is answered as
    JSON with its RFC 6750 challenge, logged and counted through `on_refused(status)`."""

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if verifier is None or request.path in OPEN_PATHS:
            return await handler(request)
        try:
            verifier.verify_header(request.headers.get("Authorization"))
        except AuthError as exc:
            on_refused(exc.status)
            log.info("http_refused", path=request.path, status=exc.status, error=exc.error, detail=exc.description)
            return web.Response(body=orjson.dumps(exc.body()), status=exc.status, content_type="application/json",
                                headers={"WWW-Authenticate": exc.www_authenticate})
        return await handler(request)

    return gate
