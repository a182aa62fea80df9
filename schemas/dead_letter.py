"""The dead-letter record's headers (part of the contract): building them and reading them back."""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from schemas.models import iso_utc

PREFIX = "dlq."
ORIGINAL_TOPIC = "dlq.original.topic"
ORIGINAL_PARTITION = "dlq.original.partition"
ORIGINAL_OFFSET = "dlq.original.offset"
ORIGINAL_TIMESTAMP = "dlq.original.timestamp"
STAGE = "dlq.stage"
ERROR_CLASS = "dlq.error.class"
ERROR_MESSAGE = "dlq.error.message"
# The formatted traceback (Python's), innermost call last; its start is cut when it is longer.
ERROR_STACKTRACE = "dlq.error.stacktrace"
ATTEMPTS = "dlq.attempts"
FAILED_AT = "dlq.failed_at"
# Added by `geodispatch dlq replay` to the record it writes back: which dead letter it came from.
REPLAYED_FROM = "dlq.replayed_from"
MAX_ERROR_MESSAGE = 2000
# In UTF-8 bytes: deep enough for any of our call chains, small beside the DLQ's 2 MiB record limit.
MAX_STACKTRACE_BYTES = 8192
TRUNCATED = "…(truncated)\n"
# W3C Trace Context (https://www.w3.org/TR/trace-context/): a request's trace goes on with its answer.
TRACE_HEADERS = ("traceparent", "tracestate")

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class SourceRecord:
    """Where a failed record was read, and its bytes exactly as they were."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def dead_letter_headers(
    source: SourceRecord, stage: str, error: BaseException, attempts: int, failed_at: datetime
) -> Headers:
    """The record's own headers, less any dlq.* from an earlier failure, plus where and why it failed."""
    kept = [(name, value) for name, value in source.headers if not name.startswith(PREFIX)]
    message = str(error)[:MAX_ERROR_MESSAGE]
    ours = {
        ORIGINAL_TOPIC: source.topic,
        ORIGINAL_PARTITION: str(source.partition),
        ORIGINAL_OFFSET: str(source.offset),
        ORIGINAL_TIMESTAMP: str(source.timestamp_ms),
        STAGE: stage,
        ERROR_CLASS: type(error).__name__,
        ERROR_MESSAGE: message,
        ATTEMPTS: str(attempts),
        FAILED_AT: iso_utc(failed_at),
    }
    return kept + [(name, value.encode()) for name, value in ours.items()] + [
        (ERROR_STACKTRACE, stacktrace(error))]


def stacktrace(error: BaseException, limit: int = MAX_STACKTRACE_BYTES) -> bytes:
    """`error`'s formatted traceback as UTF-8, at most `limit` bytes: when longer, its start gives way
    (the innermost frames and the error line are at the end). An error never raised has no frames: its
    one line then."""
    text = "".join(traceback.format_exception(error)).rstrip("\n")
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return encoded
    marker = TRUNCATED.encode()
    # cut on a character boundary: continuation bytes (0b10xxxxxx) never start one
    tail = encoded[len(encoded) - (limit - len(marker)):]
    while tail and tail[0] & 0xC0 == 0x80:
        tail = tail[1:]
    return marker + tail


def trace_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> Headers:
    """The W3C trace context (traceparent, tracestate) of a record's headers, to carry to what it causes.
    Names are case-insensitive in HTTP; on Kafka we keep them as they came."""
    return [(name, value or b"") for name, value in headers or () if name.lower() in TRACE_HEADERS]


def replay_headers(dead_letter_headers: Iterable[tuple[str, bytes]], dead_letter_id: str) -> Headers:
    """The original record's own headers for a replay, naming the dead letter it came from."""
    kept = [(name, value) for name, value in dead_letter_headers if not name.startswith(PREFIX)]
    return kept + [(REPLAYED_FROM, dead_letter_id.encode())]


def header_dict(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """Headers as text, for display and filtering; the last value of a repeated name wins."""
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers}
