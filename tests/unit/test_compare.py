"""The figures of a policy comparison (producers.compare), from what a simulated run left."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from producers.cli import simulate
from producers.compare import outcome, table
from producers.simulator import offset

RESTAURANT = (40.7128, -74.006)


def order(outcome_: str, km_away: float | None = None, eta: int | None = None, requested: float = 0.0,
          picked_up: float | None = None, error: str | None = None) -> dict:
    driver = offset(*RESTAURANT, km_away * 1000, 0.0) if km_away is not None else None
    return {"order_id": "o", "restaurant": RESTAURANT, "customer": RESTAURANT, "outcome": outcome_,
            "driver_id": "d" if driver else None, "driver_at_assignment": driver, "eta_min": eta, "error": error,
            "requested_at_s": requested, "picked_up_at_s": picked_up}


def test_an_outcome_counts_what_each_order_came_to():
    snapshot = {"orders": [
        order("delivered", 1.0, eta=20, requested=0, picked_up=60),
        order("assigned", 2.0, eta=30, requested=10, picked_up=None),
        order("failed", error="No available drivers in area"),
        order("failed", error="Invalid coordinates"),
        order("cancelled", 0.5, eta=10),
        order("pending"),
        order("malformed"),
    ]}
    result = outcome("batch", snapshot, [10.0, 20.0, 30.0, 400.0], speedup=10)
    assert (result.orders, result.served, result.no_driver, result.cancelled, result.unanswered) == (6, 2, 1, 1, 1)
    assert result.pickup_km_total == pytest.approx(3.0, rel=5e-3)
    assert result.pickup_km_p95 == pytest.approx(2.0, rel=5e-3)
    assert (result.eta_min_mean, result.eta_min_p95) == (25, 30)
    # 60 simulated seconds at ten times the speed: ten city minutes.
    assert (result.picked_up, result.wait_min_p95) == (1, pytest.approx(10.0))
    assert result.latency_ms == {"p50": 20.0, "p95": 400.0, "p99": 400.0}
    assert result.no_driver_share == pytest.approx(1 / 6)
    rendered = table([result])
    assert "| | batch |" in rendered and "| served (a driver took the trip) | 2 (33.3%) |" in rendered


@pytest.mark.parametrize(("args", "complaint"), [
    (["--compare", "greedy,fastest"], "name each of greedy, batch at most once"),
    (["--compare", "batch,batch"], "name each of greedy, batch at most once"),
    (["--workers", "2"], "--workers applies to --compare only"),
    (["--compare", "greedy,batch", "--stats-url", "http://x/stats"], "starts its own workers"),
])
def test_the_command_line_refuses_a_comparison_it_cannot_run(args, complaint):
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 2 and complaint in result.output
