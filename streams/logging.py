"""structlog set up once per process: JSON lines when not on a terminal, and stdlib logs alike."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import structlog

# The coordinates (topic, partition, offset) of the record this task is handling. One context variable
# set per record: structlog's bound_contextvars sets and resets one per key, ~20 µs a record at the
# rates the sessions agent runs at (bench/README.md).
_RECORD: ContextVar[tuple[str, int, int] | None] = ContextVar("geodispatch_record", default=None)


def handling_record(message: Any) -> RecordContext:
    """`with handling_record(message):` every log line written inside names the record, by its coordinates."""
    return RecordContext(message)


class RecordContext:
    __slots__ = ("_coordinates", "_token")

    def __init__(self, message: Any) -> None:
        self._coordinates = (message.topic, message.partition, message.offset)

    def __enter__(self) -> None:
        self._token = _RECORD.set(self._coordinates)

    def __exit__(self, *exc_info: object) -> None:
        _RECORD.reset(self._token)


def add_record_coordinates(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    coordinates = _RECORD.get()
    if coordinates is not None:
        for name, value in zip(("topic", "partition", "offset"), coordinates, strict=True):
            event_dict.setdefault(name, value)
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Route structlog and the stdlib loggers (Faust, aiokafka) through one renderer on stdout."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    shared = [
        structlog.contextvars.merge_contextvars,
        add_record_coordinates,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every coordinator hiccup at WARNING/ERROR while a broker starts; keep INFO noise down.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
