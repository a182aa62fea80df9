"""Percentiles and rates as every scenario reports them (nearest-rank, like the worker's /stats)."""

from __future__ import annotations

import math


def percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(values: list[float], digits: int = 3) -> dict[str, float | int | None]:
    ordered = sorted(values)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)

    return {
        "count": len(ordered),
        "p50": r(percentile(ordered, 0.50)),
        "p95": r(percentile(ordered, 0.95)),
        "p99": r(percentile(ordered, 0.99)),
        "max": r(ordered[-1] if ordered else None),
        "mean": r(sum(ordered) / len(ordered) if ordered else None),
    }


def window_rate(series: list[tuple[float, float]], low: float = 0.1, high: float = 0.9) -> float | None:
    """Records per second between the moments a cumulative count passed `low` and `high` of its
    final value: the steady part of a drain, without start-up and the last stragglers."""
    if len(series) < 2 or series[-1][1] <= 0:
        return None
    final = series[-1][1]
    start = next((p for p in series if p[1] >= low * final), None)
    end = next((p for p in series if p[1] >= high * final), None)
    if start is None or end is None or end[0] <= start[0]:
        return None
    return (end[1] - start[1]) / (end[0] - start[0])
