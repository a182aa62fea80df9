"""Access to a real worker's sessions API with a JWT secret configured: no token and a bad token are
refused as JSON with a WWW-Authenticate challenge, a good token passes; every route the web server has
is behind the token but /health, /stats and /metrics (streams.access)."""

from __future__ import annotations

import json
import re
import time

import jwt

from streams.access import OPEN_PATHS

SECRET = "integration-secret-" + "0123456789abcdef" * 4
AUD = "geodispatch-api"


def token(**overrides) -> str:
    claims = {"sub": "ops", "aud": AUD, "exp": int(time.time()) + 300}
    claims.update(overrides)
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_sessions_api_requires_a_valid_bearer_token(deployment):
    worker = deployment.start_worker(GEODISPATCH_JWT_SECRET=SECRET, GEODISPATCH_JWT_AUDIENCE=AUD)
    worker.wait_ready()
    path = "/driver-sessions/sessions/drv_nobody"
    nearby = "/driver-sessions/sessions/nearby?h3=892a100d2c3ffff&k=1"

    status, body = worker.get(path)
    assert status == 401, body
    assert body["error"] == "missing_token"

    status, body = worker.get(path, headers={"Authorization": "Bearer not.a.token"})
    assert status == 401, body
    assert body["error"] == "invalid_token"

    status, body = worker.get(path, headers={"Authorization": f"Bearer {token(exp=int(time.time()) - 3600)}"})
    assert status == 401 and "expired" in body["detail"], body

    status, body = worker.get(path, headers={"Authorization": f"Bearer {token(aud='other')}"})
    assert status == 403, body

    good = {"Authorization": f"Bearer {token()}"}
    status, body = worker.get(path, headers=good)
    assert status == 404, body  # through the gate: the driver is simply unknown
    status, body = worker.get(nearby, headers=good)
    assert status == 200, body
    assert body["drivers"] == []

    status, body = worker.get("/health")
    assert status in (200, 503) and "status" in body
    assert worker.get("/metrics")[0] == 200


def test_refusals_carry_a_www_authenticate_header(deployment):
    import urllib.error
    import urllib.request

    worker = deployment.start_worker(GEODISPATCH_JWT_SECRET=SECRET)
    worker.wait_ready()
    request = urllib.request.Request(worker.url("/driver-sessions/sessions/drv_x"),
                                     headers={"Authorization": "Bearer x.y.z"})
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("the request was not refused")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
        assert exc.headers["Content-Type"].startswith("application/json")
        challenge = exc.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="geodispatch"')
    assert 'error="invalid_token"' in challenge


def _served_routes(worker) -> list[str]:
    """The routes the worker's web server serves, as its `web_routes` log line names them."""
    for line in worker.log().splitlines():
        if '"web_routes"' in line:
            return json.loads(line)["routes"]
    raise AssertionError(f"the worker named no routes:\n{worker.log()[-3000:]}")


def test_every_route_but_the_probes_and_scrapers_needs_a_token(deployment):
    # faust's own views on too: a route an operator turns on is behind the gate all the same.
    worker = deployment.start_worker(GEODISPATCH_JWT_SECRET=SECRET, GEODISPATCH_JWT_AUDIENCE=AUD,
                                    GEODISPATCH_WEB_FAUST_VIEWS="true")
    worker.wait_ready()
    routes = _served_routes(worker)
    # The walk must cover our API and faust's views, or it proves nothing about either.
    assert {"/driver-sessions/sessions/{driver_id}", "/driver-sessions/sessions/nearby", "/table/",
            "/router/", "/health", "/stats", "/metrics"} <= set(routes), routes
    bearer = {"Authorization": f"Bearer {token()}"}
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x", route)
        status, body = worker.get(path)
        if route in OPEN_PATHS:
            assert status != 401, (route, body)
            continue
        assert status == 401, (route, status, body)
        assert body["error"] == "missing_token", (route, body)
        assert worker.get(path, headers=bearer)[0] != 401, route


def test_faust_views_are_off_unless_asked_for(deployment):
    worker = deployment.start_worker()
    worker.wait_ready()
    routes = _served_routes(worker)
    assert not [r for r in routes if r.startswith(("/table", "/router", "/graph"))], routes
    assert worker.get("/table/")[0] == 404
