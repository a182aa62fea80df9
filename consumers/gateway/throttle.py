"""At most N updates per second of one channel to one subscriber (seed 002 §3), the newest kept: an
update arriving too soon waits for its turn and is replaced by any newer one meanwhile, so the
subscriber always ends on the latest position."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Throttle:
    min_interval_s: float
    _last_sent_at: float = float("-inf")
    _pending: Any = field(default=None, repr=False)
    has_pending: bool = False

    @classmethod
    def per_second(cls, max_per_s: float) -> Throttle:
        return cls(1.0 / max_per_s)

    def offer(self, item: Any, now: float) -> Any | None:
        """The item, when it may go now; otherwise None, and it waits (replacing an older waiting one)."""
        if not self.has_pending and now - self._last_sent_at >= self.min_interval_s:
            self._last_sent_at = now
            return item
        self._pending, self.has_pending = item, True
        return None

    def due_at(self) -> float:
        """When the waiting item may go."""
        return self._last_sent_at + self.min_interval_s

    def take_due(self, now: float) -> Any | None:
        """The waiting item, when its turn has come."""
        if not self.has_pending or now < self.due_at():
            return None
        item, self._pending, self.has_pending = self._pending, None, False
        # The turn it went in, not when the timer woke: counted from a late wake-up, each turn would
        # start a little later, and updates that come at the limit's own rate would wait longer and longer.
        self._last_sent_at = self.due_at()
        return item
