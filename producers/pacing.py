"""Rate limiting for anything that writes to the broker on an operator's behalf (produce, replay, simulate)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket: at most `rate` acquisitions per second on average, bursts up to `burst`.
    `rate` None means unlimited. The clock is injectable so the arithmetic is unit-tested without sleeping."""

    def __init__(self, rate: float | None, burst: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None for unlimited)")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()

    def delay(self, count: float = 1.0) -> float:
        """Takes `count` tokens now and returns how long to wait before acting (0 when within the rate)."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= count
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self, count: float = 1.0) -> None:
        wait = self.delay(count)
        if wait > 0:
            await asyncio.sleep(wait)
