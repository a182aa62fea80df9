"""The token bucket holds callers to the rate on average and allows its burst."""

from __future__ import annotations

import pytest

from producers.pacing import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_unlimited_never_waits():
    limiter = RateLimiter(None)
    assert all(limiter.delay() == 0 for _ in range(1000))


def test_waits_grow_so_the_average_rate_holds():
    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock)
    waits = [limiter.delay() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_time_refills_the_bucket_up_to_the_burst():
    clock = FakeClock()
    limiter = RateLimiter(10, burst=5, clock=clock)
    assert [limiter.delay() for _ in range(5)] == [0.0] * 5
    assert limiter.delay() == pytest.approx(0.1)
    clock.now = 10.0  # a long pause refills only up to the burst
    assert [limiter.delay() for _ in range(5)] == [0.0] * 5
    assert limiter.delay() > 0


def test_a_rate_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(0)
