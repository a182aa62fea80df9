"""The project's one percentile rule, for the worker's /stats, the simulator, the bench and the fault
suite alike: nearest rank, the smallest observation with at least that share of all at or below it
(p99 of 1..100 is 99, never an interpolated value nobody observed)."""

from __future__ import annotations

import math
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
