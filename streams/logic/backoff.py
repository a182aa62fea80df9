"""Bounded exponential backoff for transient failures."""

from __future__ import annotations


def backoff_delays(attempts: int, base_s: float, max_s: float) -> list[float]:
    """Waits between `attempts` tries: base, 2*base, 4*base ... capped at max_s (attempts-1 of them)."""
    return [min(max_s, base_s * 2**n) for n in range(max(0, attempts - 1))]


def attempts_within(wait_s: float, base_s: float, max_s: float) -> int:
    """The fewest attempts whose waits between them (backoff_delays) add up to wait_s at least."""
    attempts, waited = 1, 0.0
    while waited < wait_s:
        waited += min(max_s, base_s * 2 ** (attempts - 1))
        attempts += 1
    return attempts
