"""Percentiles and rates as every scenario reports them (infra.percentiles' nearest rank, like the
worker's /stats)."""

from __future__ import annotations

from infra.percentiles import percentiles


def summarize(values: list[float], digits: int = 3) -> dict[str, float | int | None]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)

    p50, p95, p99, top = percentiles(values, 0.50, 0.95, 0.99, 1.0)
    return {
        "count": len(values),
        "p50": r(p50),
        "p95": r(p95),
        "p99": r(p99),
        "max": r(top),
        "mean": r(sum(values) / len(values) if values else None),
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
