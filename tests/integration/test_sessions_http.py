"""The sessions API's errors: every 400 of nearby and the 404 of a session, all JSON."""

from __future__ import annotations

import h3
import pytest

from tests.integration.drivers import cell9

NEARBY = "/driver-sessions/sessions/nearby"
RES8 = h3.cell_to_parent(cell9(), 8)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    from tests.integration.harness import Deployment

    dep = Deployment(workdir=tmp_path_factory.mktemp("http"))
    dep.apply_topics()
    worker = dep.start_worker()
    worker.wait_ready()
    yield worker
    dep.cleanup()


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("", "h3"),
        ("h3=", "h3"),
        ("h3=not-a-cell", "h3"),
        ("h3=8928308280fffzz", "h3"),
        (f"h3={RES8}", "h3"),
        (f"h3={cell9()}0", "h3"),
        (f"h3={cell9()}&k=-1", "k"),
        (f"h3={cell9()}&k=6", "k"),
        (f"h3={cell9()}&k=abc", "k"),
        (f"h3={cell9()}&k=1.5", "k"),
        (f"h3={cell9()}&limit=0", "limit"),
        (f"h3={cell9()}&limit=101", "limit"),
        (f"h3={cell9()}&limit=ten", "limit"),
    ],
)
def test_nearby_rejects_bad_parameters_with_a_json_400(worker, query, parameter):
    status, body = worker.get(f"{NEARBY}?{query}")
    assert status == 400, body
    assert isinstance(body, dict), body
    assert body["parameter"] == parameter
    assert isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize("query", ["k=0", "k=5", "limit=1", "limit=100", "k=5&limit=100", ""])
def test_nearby_accepts_the_bounds(worker, query):
    status, body = worker.get(f"{NEARBY}?h3={cell9()}&{query}")
    assert status == 200, body
    assert body["drivers"] == []
    k = int(query.split("k=")[1].split("&")[0]) if "k=" in query else 1
    assert len(body["queried_cells"]) == len(h3.grid_disk(cell9(), k))


def test_unknown_driver_is_a_json_404(worker):
    status, body = worker.get("/driver-sessions/sessions/drv_nobody")
    assert status == 404
    assert isinstance(body, dict) and body["driver_id"] == "drv_nobody" and body["error"]


def test_health_and_stats_are_json(worker):
    status, body = worker.get("/health")
    assert status == 200 and body["status"] == "healthy", body
    assert body["kafka"] == "connected" and body["redis"] == "connected"
    status, body = worker.get("/stats")
    assert status == 200 and "drivers" in body and "pings" in body
    # The worker holds every partition of its one-worker group, its statuses' among them.
    assert body["partitions"]["rebalancing"] is False
    assert any(tp.endswith("driver_status:0") for tp in body["partitions"]["assigned"]), body
