"""Liveness, readiness and /metrics of real processes on the real broker and Redis: every metric the
alert rules and the dashboard (deploy/observability/) name is on a worker's or the gateway's /metrics;
consumer lag is reported for the worker's consumer groups; a Redis outage makes a worker unready, never
dead (docs/OBSERVABILITY.md)."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from infra.process_metrics import package_version
from tests.integration.cutting_proxy import CuttingProxy
from tests.integration.drivers import send_ping, send_status, wait_session
from tests.integration.harness import REDIS_URL, wait_for
from tests.observability import SYNTHETIC, exposed_names, named_metrics

SECRET = f"probes-test-{uuid.uuid4().hex}"


def samples(page: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(page)
            for s in family.samples}


def status_of(process, path: str) -> int | None:
    """The status of a GET, None while nothing listens yet."""
    try:
        return process.get(path, timeout=2)[0]
    except OSError:
        return None


def metric(process, name: str, **labels: str) -> float | None:
    status, page = process.get("/metrics")
    assert status == 200
    return samples(page).get((name, frozenset(labels.items())))


def test_a_worker_is_live_at_once_ready_once_it_acts_and_exposes_what_the_rules_name(deployment):
    worker = deployment.start_worker()
    wait_for(lambda: status_of(worker, "/health/live") == 200, timeout=60, interval=0.1,
             message="the worker's loop to answer")
    assert worker.get("/health/live") == (200, {"status": "alive"})
    worker.wait_ready()
    wait_for(lambda: worker.get("/health/ready")[0] == 200, timeout=30, message="readiness once ready")
    assert worker.get("/health/ready") == (200, {"status": "ready", "kafka": "connected", "redis": "connected",
                                                 "partitions": "ready"})
    assert worker.get("/health") == (200, {"status": "healthy", "kafka": "connected", "redis": "connected"})

    send_status(deployment, "drv_probe")
    send_ping(deployment, "drv_probe")
    wait_session(worker, "drv_probe", lambda s: s["online"] and s["last_loc"], message="online and located")

    gateway = deployment.start_gateway(SECRET)
    wait_for(lambda: status_of(gateway, "/health/live") == 200, timeout=60, interval=0.1,
             message="the gateway's loop to answer")
    wait_for(lambda: gateway.get("/health/ready")[0] == 200, timeout=60, message="the gateway caught up")
    assert gateway.get("/health/ready") == (200, {"status": "ready", "caught_up": True})
    assert gateway.get("/health") == (200, {"status": "ok"})

    worker_names = exposed_names(worker.get("/metrics")[1])
    gateway_names = exposed_names(gateway.get("/metrics")[1])
    named = named_metrics()
    missing = {name: where for name, where in named.items() if name not in worker_names | gateway_names | SYNTHETIC}
    assert not missing, missing
    # Each where it belongs: the gateway's on the gateway, the rest on every worker.
    assert not {n for n in named if n.startswith("geodispatch_gateway_")} - gateway_names
    assert not {n for n in named if not n.startswith("geodispatch_gateway_")} - worker_names - SYNTHETIC
    for process in (worker, gateway):
        page = samples(process.get("/metrics")[1])
        assert page[("process_cpu_seconds_total", frozenset())] > 0
        assert page[("process_resident_memory_bytes", frozenset())] > 10 * 2**20
        builds = [dict(labels) for name, labels in page if name == "geodispatch_build_info"]
        assert len(builds) == 1 and builds[0]["version"] == package_version(), builds


def test_a_worker_reports_the_lag_of_each_of_its_consumer_groups(deployment):
    worker = deployment.start_worker()
    worker.wait_ready()
    names, group = deployment.names, f"{deployment.prefix}{deployment.app_id}"
    send_status(deployment, "drv_lag")
    for step in range(20):
        send_ping(deployment, "drv_lag", lat=40.75 + step * 0.0001)
    wait_session(worker, "drv_lag", lambda s: s["online"] and s["last_loc"], message="online and located")
    expected = {
        (group, names.driver_commands),  # faust's own consumer
        (f"{group}.pings", names.locations(deployment.regions[0])),  # the ping reader's group
        (group, names.requests(deployment.regions[0])),  # the request reader commits in faust's group
    }

    def reported() -> set[tuple[str, str]]:
        page = samples(worker.get("/metrics")[1])
        return {(dict(labels)["group"], dict(labels)["topic"]) for name, labels in page
                if name == "geodispatch_consumer_partitions"}

    wait_for(lambda: expected <= reported(), timeout=30, message=f"lag of {expected}")
    for group_name, topic in expected:
        # One worker: every partition of each topic is its own.
        assert metric(worker, "geodispatch_consumer_partitions", group=group_name, topic=topic) == deployment.partitions
    pings = {"group": f"{group}.pings", "topic": names.locations(deployment.regions[0])}
    # Everything sent is read: the lag comes back to nothing.
    wait_for(lambda: metric(worker, "geodispatch_consumer_lag_records", **pings) == 0, timeout=30,
             message="the ping reader caught up")
    assert metric(worker, "geodispatch_consumer_lag_max_records", **pings) == 0
    # Topics faust subscribes to but leaves to the readers are not reported as faust's.
    assert (group, names.locations(deployment.regions[0])) not in reported()


def test_a_redis_outage_makes_a_worker_unready_never_dead(deployment):
    """What a Kubernetes liveness probe on /health/ready (or /health) would have restarted: the outage
    takes the worker out of its Service, and it comes back by itself once Redis answers again."""
    target = urlsplit(REDIS_URL)
    proxy = CuttingProxy(target.hostname or "127.0.0.1", target.port or 6379)
    try:
        worker = deployment.start_worker(REDIS_URL=target._replace(netloc=f"127.0.0.1:{proxy.port}").geturl())
        worker.wait_ready()
        wait_for(lambda: worker.get("/health/ready")[0] == 200, timeout=30, message="ready behind the proxy")
        proxy.cut()
        started = time.monotonic()
        wait_for(lambda: worker.get("/health/ready")[0] == 503, timeout=30, message="unready without Redis")
        status, body = worker.get("/health/ready")
        assert status == 503 and body["status"] == "not_ready" and body["redis"].startswith("unreachable"), body
        assert body["kafka"] == "connected", body
        # Live all along, for as long as the outage lasts here.
        while time.monotonic() - started < 10:
            assert worker.get("/health/live") == (200, {"status": "alive"})
            assert worker.alive(), worker.log_tail(40)
            time.sleep(0.5)
        proxy.restore()
        wait_for(lambda: worker.get("/health/ready")[0] == 200, timeout=60, message="ready again with Redis back")
        assert worker.alive()
    finally:
        proxy.close()


def test_an_api_process_has_the_probes_and_the_process_metrics(deployment):
    api = deployment.start_worker("api", roles="api")
    api.wait_answering()
    assert api.get("/health/live") == (200, {"status": "alive"})
    assert api.get("/health/ready") == (200, {"status": "ready", "redis": "connected"})
    names = exposed_names(api.get("/metrics")[1])
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "geodispatch_build_info",
            "geodispatch_http_requests_total"} <= names
    assert metric(api, "geodispatch_http_requests_total", route="health_ready", status="200") == 1


def test_the_probes_need_no_token(deployment):
    worker = deployment.start_worker(GEODISPATCH_JWT_SECRET=SECRET)
    worker.wait_ready()
    assert worker.get("/health/live")[0] == 200
    assert worker.get("/health/ready")[0] == 200
    assert worker.get("/driver-sessions/sessions/drv_x")[0] == 401
