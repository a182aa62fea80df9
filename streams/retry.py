"""Retries an awaitable on transient failures (Redis or broker unreachable) with bounded backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from streams.logic.backoff import backoff_delays
from streams.metrics import Metrics

log = structlog.get_logger(__name__)
T = TypeVar("T")
TRANSIENT = (RedisError, KafkaError, OSError, asyncio.TimeoutError)


class GaveUp(Exception):
    """Every attempt failed; carries the attempt count and the last error."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(f"{type(last).__name__}: {last} (after {attempts} attempts)")


async def with_retries(
    action: Callable[[], Awaitable[T]], stage: str, metrics: Metrics, attempts: int, base_s: float, max_s: float
) -> T:
    delays = backoff_delays(attempts, base_s, max_s)
    for attempt, delay in enumerate([*delays, None], start=1):
        try:
            return await action()
        except TRANSIENT as exc:
            if delay is None:
                raise GaveUp(attempt, exc) from exc
            metrics.retries.labels(stage=stage).inc()
            log.warning("retrying", stage=stage, attempt=attempt, delay_s=delay, error=str(exc))
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
