"""Access to a real worker's sessions API with a JWT secret configured: no token and a bad token are
refused as JSON with a WWW-Authenticate challenge, a good token passes; /health and /metrics stay open."""

from __future__ import annotations

import time

import jwt

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
