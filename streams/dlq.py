"""The one way every agent gives up on a record: send it to dispatch.dlq, log it and count it."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import structlog

from schemas.codec import InvalidMessage
from schemas.dead_letter import SourceRecord, dead_letter_headers
from streams.logging import handling_record
from streams.logic import InvalidEvent
from streams.metrics import Metrics
from streams.retry import GaveUp
from streams.topics import send_confirmed

log = structlog.get_logger(__name__)


def timestamp_ms(message: Any) -> int:
    """A record's timestamp in milliseconds: faust gives it in seconds (a float), aiokafka in
    milliseconds (an int)."""
    return int(message.timestamp * 1000) if isinstance(message.timestamp, float) else int(message.timestamp)


def source_of(message: Any) -> SourceRecord:
    """A Faust/aiokafka message's coordinates and raw bytes."""
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=timestamp_ms(message),
        key=message.key,
        value=message.value,
        headers=list(message.headers or ()),
    )


class WorkerFailure(Exception):
    """The worker failed, not the record: its table store refused a write (a full disk). Never
    dead-lettered: the worker stops without acking the record, and the partition's next owner
    processes it."""


class DeadLetters:
    """Sends failed records to the dead-letter topic with the contract's headers."""

    def __init__(self, topic: Any, metrics: Metrics) -> None:
        self._topic = topic
        self._metrics = metrics

    async def send(self, source: SourceRecord, stage: str, error: BaseException, attempts: int = 1) -> None:
        headers = dead_letter_headers(source, stage, error, attempts, datetime.now(UTC))
        # Acknowledged before the failed record counts as done, so the record cannot be lost.
        await send_confirmed(self._topic, key=source.key, value=source.value, headers=headers)
        self._metrics.dead_letters.labels(stage=stage, error_class=type(error).__name__).inc()
        log.warning(
            "dead_lettered",
            stage=stage,
            error_class=type(error).__name__,
            error=str(error),
            attempts=attempts,
            topic=source.topic,
            partition=source.partition,
            offset=source.offset,
        )


async def guarded(dead_letters: DeadLetters, message: Any, stage: str, action: Any) -> Any:
    """Runs one record's processing and returns its result; whatever it raises sends the record to the
    dead-letter topic instead of stopping the agent (Faust would ack it and move on, losing it
    silently), and the result is then None."""
    try:
        return await action()
    except WorkerFailure:
        raise
    except Exception as exc:
        await give_up(dead_letters, message, stage, exc)
    return None


def expected_failure(exc: BaseException) -> bool:
    """Whether `exc` is a record's own fault or a transient failure retried to the end, as opposed to
    a bug or an unforeseen input, which is logged with its traceback where it is caught."""
    return isinstance(exc, InvalidMessage | InvalidEvent | GaveUp)


async def give_up(dead_letters: DeadLetters, message: Any, stage: str, exc: Exception) -> None:
    """Dead-letters `message` for `exc`, with the last error and the attempts when retries ran out.
    Called inside the `except` that caught an unexpected `exc`, it logs the traceback too."""
    if isinstance(exc, GaveUp):
        await dead_letters.send(source_of(message), stage, exc.last, attempts=exc.attempts)
        return
    if not expected_failure(exc):  # a bug or an unforeseen input: keep the record, keep the agent alive
        log.error("processing_failed", stage=stage, topic=message.topic, partition=message.partition,
                  offset=message.offset, exc_info=exc)
    await dead_letters.send(source_of(message), stage, exc)


async def process_each(stream: Any, dead_letters: DeadLetters, stage: str, process: Any) -> None:
    """The body of every agent: each record bound to the log context by its coordinates, processed
    by `process(message)`, and dead-lettered instead if that fails."""
    async for event in stream.events():
        message = event.message
        with handling_record(message):
            await guarded(dead_letters, message, stage, functools.partial(process, message))
