"""Bounded exponential backoff for transient failures."""

from __future__ import annotations


def backoff_delays(attempts: int, base_s: float, max_s: float) -> list[float]:
    """Waits between `attempts` tries: base, 2*base, 4*base ... capped at max_s (attempts-1 of them)."""
    return [min(max_s, base_s * 2**n) for n in range(max(0, attempts - 1))]
