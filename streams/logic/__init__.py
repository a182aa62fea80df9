"""Pure decision logic: no Faust, no Kafka, no Redis; every function unit-tested."""

from __future__ import annotations


class InvalidEvent(ValueError):
    """An event that is well-formed but can never be applied (a time far in the future, say)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)
