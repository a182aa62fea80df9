"""Our faust consumer for unit tests of its guards."""

from __future__ import annotations

from streams.faust_fixes import GuardedConsumer


def guarded(**attributes) -> GuardedConsumer:
    """Our consumer without faust's start-up (no app, no thread, no broker): the guards' own state, and
    whatever else a test gives it."""
    consumer = GuardedConsumer.__new__(GuardedConsumer)
    consumer._refused_gaps, consumer._holes, consumer._starts, consumer._fills = set(), {}, {}, set()
    for name, value in attributes.items():
        setattr(consumer, name, value)
    return consumer
