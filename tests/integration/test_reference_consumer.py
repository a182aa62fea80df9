"""The reference order-service consumer, SIGKILLed mid-stream and restarted, ends with every order's state
right and each notification sent exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from datetime import UTC, datetime

from consumers.orders import transition
from schemas.codec import default_codec
from schemas.models import AssignmentResponse
from tests.integration.harness import PYTHON, ROOT, wait_for

AT = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)


def answers(orders: int) -> list[AssignmentResponse]:
    """Every order answered; some failed first then assigned, some answered twice, one given a second driver."""
    out = []
    for n in range(orders):
        order = f"ord_{n:04d}"
        assigned = AssignmentResponse(orderId=order, status="assigned", driverId=f"drv_{n % 37}", eta=10 + n % 20,
                                      assignedAt=AT)
        if n % 5 == 0:
            out.append(AssignmentResponse(orderId=order, status="failed", error="No available drivers in area",
                                          failedAt=AT))
        if n % 7 == 0:
            out.append(AssignmentResponse(orderId=order, status="failed", error="No available drivers in area",
                                          failedAt=AT))
            continue
        out.append(assigned)
        if n % 3 == 0:
            out.append(assigned)  # the same answer again
        if n % 11 == 0:
            out.append(assigned.model_copy(update={"driverId": "drv_other"}))
    return out


def expected(responses: list[AssignmentResponse]) -> tuple[dict, dict]:
    states, notifications = {}, {}
    for response in responses:
        change = transition(states.get(response.orderId), response)
        states[response.orderId] = change.state
        if change.notification:
            notifications[response.orderId] = notifications.get(response.orderId, 0) + 1
    return states, notifications


def applied(db_path) -> int:
    if not db_path.exists():
        return 0
    try:
        with sqlite3.connect(db_path) as db:
            return db.execute("SELECT COALESCE(SUM(next_offset), 0) FROM offsets").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_killed_and_restarted_follower_ends_right_with_no_duplicate_effect(deployment, tmp_path):
    responses = answers(300)
    codec = default_codec()
    deployment.produce(deployment.names.responses, [(r.orderId.encode(), codec.encode(r)) for r in responses])
    db_path = tmp_path / "orders.sqlite"
    follow = [PYTHON, "-m", "streams", "orders", "follow", "--db", str(db_path), "--batch-size", "10"]

    first = subprocess.Popen([*follow, "--max-per-s", "150"], env=deployment.env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: applied(db_path) >= 60, timeout=60, message="the follower to apply some answers")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    done_before_kill = applied(db_path)
    assert 0 < done_before_kill < len(responses), "the kill should land mid-stream"

    second = subprocess.run([*follow, "--idle-exit", "4"], env=deployment.env(), cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert applied(db_path) == len(responses)

    states, notifications = expected(responses)
    shown = deployment.cli("orders", "show", "--db", str(db_path), "--json").stdout.splitlines()
    import json

    rows = {row["order_id"]: row for row in map(json.loads, shown)}
    assert set(rows) == set(states)
    for order_id, state in states.items():
        row = rows[order_id]
        assert (row["status"], row["driver_id"], row["eta_min"], row["answers"], row["conflicts"]) == (
            state.status, state.driver_id, state.eta_min, state.answers, state.conflicts), order_id
        assert row["notifications"] == notifications[order_id], order_id
    # the assigned ones kept their first driver; failed-then-assigned ones were notified twice (once each)
    assert rows["ord_0011"]["driver_id"] == "drv_11" and rows["ord_0011"]["conflicts"] == 1
    assert rows["ord_0005"]["notifications"] == 2 and rows["ord_0007"]["status"] == "failed"

    one = deployment.cli("orders", "show", "--db", str(db_path), "--order-id", "ord_0001")
    assert "ord_0001" in one.stdout and "1 order(s)" in one.stdout
    unknown = deployment.cli("orders", "show", "--db", str(db_path), "--order-id", "nope", check=False)
    assert unknown.returncode == 1
