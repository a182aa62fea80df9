"""The exact latency percentiles of /stats and the metric naming rules."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from infra.percentiles import LatencyWindow, nearest_rank
from streams.metrics import Metrics


def test_an_empty_window_has_no_percentiles():
    assert LatencyWindow().percentiles(0.5, 0.99) == {"p50": None, "p99": None, "count": 0}


def test_nearest_rank_percentiles():
    window = LatencyWindow()
    for value in range(1, 101):
        window.observe(value / 1000)
    assert window.percentiles(0.5, 0.95, 0.99, 1.0) == {
        "p50": 0.05, "p95": 0.095, "p99": 0.099, "p100": 0.1, "count": 100}
    window.observe(0.0)  # order of arrival does not matter
    assert window.percentiles(0.0)["p0"] == 0.0


def test_the_window_keeps_only_the_last_observations():
    window = LatencyWindow(size=3)
    for value in (9.0, 1.0, 2.0, 3.0):
        window.observe(value)
    assert window.percentiles(1.0) == {"p100": 3.0, "count": 3}


@given(st.integers(min_value=0, max_value=1000), st.integers(min_value=1, max_value=5000))
def test_nearest_rank_is_exact(per_mille, count):
    quantile = per_mille / 1000
    exact = math.ceil(Fraction(per_mille, 1000) * count) - 1
    assert nearest_rank(quantile, count) == min(count - 1, max(0, exact))


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=200), st.sampled_from([0.5, 0.95, 0.99]))
def test_a_percentile_is_an_observation_with_enough_below_it(values, quantile):
    window = LatencyWindow()
    for value in values:
        window.observe(value)
    result = window.percentiles(quantile)[f"p{round(quantile * 100)}"]
    assert result in values
    assert sum(v <= result for v in values) >= quantile * len(values) - 1e-9


def test_metric_names_follow_prometheus_conventions():
    metrics = Metrics(CollectorRegistry())
    names = {metric.name for metric in metrics.registry.collect()}
    # Ours, and prometheus_client's standard process, platform and GC collectors (infra.process_metrics).
    assert all(n.startswith(("geodispatch_", "process_", "python_")) for n in names)
    for metric in metrics.registry.collect():
        assert not {"driver_id", "order_id", "h3", "cell"} & set(
            label for sample in metric.samples for label in sample.labels)
        # A histogram is of durations, in seconds, unless it counts things per request or per window.
        if metric.type == "histogram" and not metric.name.endswith(("_candidates", "_window_orders")):
            assert metric.name.endswith("_seconds")
