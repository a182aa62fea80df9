"""A targeted guard around faust-streaming's acking, installed once by streams.app.

faust-streaming's Stream skips a message fetched under an older consumer-group generation, or while
flow control is paused for a rebalance, and then *acks* it unprocessed ("we want to ack the
filtered out message, otherwise the lag would increase", faust/streams.py). When the worker keeps
or gets back that partition, the next commit moves past the skipped record and it is never
processed: our zombie fault test lost requests exactly this way. Refusing those acks leaves the
offset uncommitted, so the record is fetched again under the new generation and processed then
(at-least-once; every effect of ours is idempotent)."""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer

_INSTALLED_FLAG = "_geodispatch_ack_guard"


def install_ack_guard() -> None:
    if getattr(Consumer.ack, _INSTALLED_FLAG, False):
        return
    original = Consumer.ack

    def ack(self: Consumer, message: Any) -> bool:
        app = self.app
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            return False
        return original(self, message)

    setattr(ack, _INSTALLED_FLAG, True)
    Consumer.ack = ack
