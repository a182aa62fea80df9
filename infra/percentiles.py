"""The project's one percentile rule, for the worker's /stats, the simulator, the bench and the fault
suite alike: nearest rank, the smallest observation with at least that share of all at or below it
(p99 of 1..100 is 99, never an interpolated value nobody observed)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable


def nearest_rank(quantile: float, count: int) -> int:
    """Index of the nearest-rank percentile in a sorted list of `count` values. The product is
    rounded first: 0.07 * 100 is 7.000000000000001 in floating point, and its ceiling 8 is one rank
    too far."""
    return min(count - 1, max(0, math.ceil(round(quantile * count, 9)) - 1))


def percentiles(values: Iterable[float], *quantiles: float) -> list[float | None]:
    """Each quantile's nearest-rank percentile of `values` (sorted here, once), None for no values."""
    ordered = sorted(values)
    return [ordered[nearest_rank(q, len(ordered))] if ordered else None for q in quantiles]


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyWindow:
    """The last N observations, for exact p50/p95/p99 in /stats (histograms only approximate)."""

    def __init__(self, size: int = 10_000) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def observe(self, seconds: float) -> None:
        self._values.append(seconds)

    def percentiles(self, *quantiles: float) -> dict[str, float | int | None]:
        found = zip(quantiles, percentiles(self._values, *quantiles), strict=True)
        result: dict[str, float | int | None] = {f"p{round(q * 100):d}": value for q, value in found}
        result["count"] = len(self._values)
        return result
