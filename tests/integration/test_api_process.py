"""The sessions API in processes of its own (`geodispatch worker --roles api`), on the real broker and
Redis: it answers from the shared index exactly as the worker does, also once no stream processor
runs, behind the same token gate; and a stream worker without the `api` role serves no sessions."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import jwt

from tests.integration.drivers import NYC, cell9, nearby, send_ping, send_status, session, wait_nearby, wait_session

PATIENT = {"GEODISPATCH_HEARTBEAT_INTERVAL_S": "30"}
DRIVERS = ("drv_api_1", "drv_api_2", "drv_api_3")
SECRET = "an api process secret of at least thirty-two bytes"


def _located(deployment, worker) -> None:
    for n, driver in enumerate(DRIVERS):
        send_status(deployment, driver)
        send_ping(deployment, driver, lat=NYC[0] + n * 0.0005, lng=NYC[1])
    for driver in DRIVERS:
        wait_session(worker, driver, lambda s: s["online"] and s["last_loc"], message="online and located")
    wait_nearby(worker, cell9(), lambda found: set(DRIVERS) <= set(found), k=2, message="all three nearby")


def test_an_api_process_answers_as_the_worker_did_once_no_stream_processor_runs(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    _located(deployment, worker)
    by_worker = {driver: session(worker, driver) for driver in DRIVERS}
    nearby_by_worker = nearby(worker, cell9(), k=2)
    worker.stop()

    api = deployment.start_worker("api", roles="api", **PATIENT)
    api.wait_answering()
    assert {driver: session(api, driver) for driver in DRIVERS} == by_worker
    assert nearby(api, cell9(), k=2) == nearby_by_worker
    status, body = api.get("/driver-sessions/sessions/drv_nobody")
    assert status == 404 and body["driver_id"] == "drv_nobody"
    status, body = api.get(f"/driver-sessions/sessions/nearby?h3={cell9()}&k=9")
    assert status == 400 and body["parameter"] == "k"
    assert api.get("/health") == (200, {"status": "healthy", "redis": "connected"})
    status, metrics = api.get("/metrics")
    assert status == 200 and 'geodispatch_http_requests_total{route="session",status="200"} 3.0' in metrics
    assert not deployment.data_dir("api").exists(), "an API process keeps no data directory"


def test_two_api_processes_serve_beside_a_stream_worker_without_the_api_role(deployment):
    worker = deployment.start_worker(roles="sessions,assignments", **PATIENT)
    worker.wait_ready()
    assert worker.get("/driver-sessions/sessions/drv_api_1")[0] == 404
    assert worker.get("/health")[0] == 200
    first, second = (deployment.start_worker(name, roles="api") for name in ("api1", "api2"))
    first.wait_answering()
    second.wait_answering()

    _located(deployment, first)
    assert session(second, "drv_api_2") == session(first, "drv_api_2")
    status, body = worker.get("/driver-sessions/sessions/drv_api_2")
    assert (status, body) == (404, {"error": "Not Found", "path": "/driver-sessions/sessions/drv_api_2"}), (
        "the stream worker serves no sessions without the api role")
    assert api_405(first) == (405, {"error": "Method Not Allowed", "path": "/health"})


def api_405(process) -> tuple[int, object]:
    request = urllib.request.Request(process.url("/health"), method="POST", data=b"")
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    raise AssertionError("a POST to /health was answered")


def test_an_api_process_keeps_the_token_gate(deployment):
    api = deployment.start_worker("api", roles="api", GEODISPATCH_JWT_SECRET=SECRET)
    api.wait_answering()
    assert api.get("/driver-sessions/sessions/drv_x")[0] == 401
    token = jwt.encode({"sub": "support-1", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert api.get("/driver-sessions/sessions/drv_x", headers={"Authorization": f"Bearer {token}"})[0] == 404
    assert api.get("/health")[0] == 200


def test_roles_the_worker_cannot_run_are_refused_at_start(deployment):
    result = deployment.cli("worker", "--roles", "sessions,dispatch", check=False, timeout=60)
    assert result.returncode == 2
    assert "'sessions', 'assignments' or 'api'" in result.stderr, result.stderr
