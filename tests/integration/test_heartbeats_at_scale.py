"""50,000 drivers fall silent at once while others keep pinging: every silent one is timed out once,
through a heartbeat sweep per partition (streams/agents/upkeep.py), and no pinging driver is, since
pings are applied between the sweep's blocks. On the real broker and Redis."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import orjson

from tests.integration.drivers import NYC, decoded, ping_value, send_ping, send_status, wait_session
from tests.integration.harness import wait_for
from tests.integration.test_sessions_restart import produce_many

SILENT = 50_000
PINGING = [f"hb_alive{i}" for i in range(5)]
REGION = "4_-7"
# A 6 s heartbeat timeout: the whole fleet is overdue soon after it is in.
SETTINGS = {"GEODISPATCH_HEARTBEAT_INTERVAL_S": "2"}
PING_EVERY_S = 1.2


def _timeouts(worker) -> float:
    _, metrics = worker.get("/metrics")
    (line,) = [line for line in metrics.splitlines() if line.startswith("geodispatch_heartbeat_timeouts_total ")]
    return float(line.split()[1])


def test_fifty_thousand_silent_drivers_time_out_once_each_while_pings_keep_flowing(deployment):
    worker = deployment.start_worker(**SETTINGS)
    worker.wait_ready()
    stop = threading.Event()

    def keep_pinging() -> None:
        while not stop.wait(PING_EVERY_S):
            for driver in PINGING:
                send_ping(deployment, driver)

    for driver in PINGING:
        send_status(deployment, driver)
        send_ping(deployment, driver)
    pinger = threading.Thread(target=keep_pinging, daemon=True)
    pinger.start()
    try:
        now = datetime.now(UTC)
        silent = [f"hb_silent{i}" for i in range(SILENT)]
        status = {"online": True, "eligibility": "ACTIVE", "ts": now.isoformat()}
        produce_many(deployment, deployment.names.status,
                     [(d.encode(), orjson.dumps({**status, "driver_id": d})) for d in silent])
        produce_many(deployment, deployment.names.locations(REGION),
                     [(d.encode(), ping_value(d, *NYC, now)) for d in silent])
        wait_for(lambda: _timeouts(worker) >= SILENT, timeout=240, interval=1.0, message="every silent one timed out")
        for driver in PINGING:
            wait_session(worker, driver, lambda s: s["online"], message=f"{driver} still online")
    finally:
        stop.set()
        pinger.join()

    presence = decoded(deployment.read_all(deployment.names.presence))
    timed_out = [p["driver_id"] for p in presence if not p["online"] and p["reason"] == "heartbeat_timeout"]
    assert len(timed_out) == SILENT and set(timed_out) == set(silent)
    assert _timeouts(worker) == SILENT
    wait_for(lambda: worker.stats()["drivers"]["online"] == len(PINGING), message="only the pinging drivers online")
