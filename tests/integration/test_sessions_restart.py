"""The Redis index is derived state: emptied, it comes back from the sessions table's changelog
when a worker starts, and on `geodispatch index rebuild` while workers run."""

from __future__ import annotations

import time

from tests.integration.drivers import (
    NYC,
    cell9,
    delete_redis_keys,
    nearby,
    send_ping,
    send_status,
    session,
    wait_nearby,
)

DRIVERS = [f"drv_r{i}" for i in range(6)]
PATIENT = {"GEODISPATCH_HEARTBEAT_INTERVAL_S": "60"}


def _online_fleet(deployment, worker) -> None:
    for i, driver in enumerate(DRIVERS):
        send_status(deployment, driver)
        send_ping(deployment, driver, NYC[0] + i * 1e-4, NYC[1])
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, message="the whole fleet")


def test_restart_with_an_emptied_redis_brings_every_driver_back(deployment):
    worker = deployment.start_worker("w1", **PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)

    worker.stop()
    assert delete_redis_keys(deployment.redis_prefix) > 0

    worker = deployment.start_worker("w1", **PATIENT)  # same name: same data directory
    worker.wait_ready(timeout=90)
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, timeout=60, message="fleet rebuilt")
    status, body = session(worker, DRIVERS[0])
    assert status == 200 and body["online"] is True


def test_restart_with_an_empty_data_dir_restores_from_the_changelog(deployment):
    worker = deployment.start_worker("w1", **PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)

    worker.stop()
    assert delete_redis_keys(deployment.redis_prefix) > 0

    worker = deployment.start_worker("w2", **PATIENT)  # a new data directory: only the changelog
    worker.wait_ready(timeout=90)
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, timeout=60, message="fleet restored")


def test_index_rebuild_command_restores_deleted_keys(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)

    # Everything but the epoch: the worker cannot notice on its own, only the command repairs it.
    assert delete_redis_keys(deployment.redis_prefix, keep=("meta:epoch",)) > 0
    time.sleep(2.5)
    assert nearby(worker, cell9(), k=2)["drivers"] == []
    result = deployment.cli("index", "rebuild")
    assert "new epoch" in result.stdout
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, timeout=30, message="fleet rebuilt")


def test_index_rebuild_command_restores_lost_cell_sets(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)

    # The drivers' hashes survive (same versions as the table's), only the cell sets are gone.
    assert delete_redis_keys(deployment.redis_prefix, match="c[79]:*") > 0
    assert nearby(worker, cell9(), k=2)["drivers"] == []
    deployment.cli("index", "rebuild")
    wait_nearby(worker, cell9(), lambda d: sorted(d) == DRIVERS, k=2, timeout=30, message="cell sets rebuilt")
