"""structlog set up once per process: JSON lines when not on a terminal, and stdlib logs alike."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
import structlog

# The coordinates (topic, partition, offset) of the record this task is handling. One context variable
# set per record: structlog's bound_contextvars sets and resets one per key, which showed in the
# sessions agent's profile (bench/README.md).
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


class NamedWriteLogger(structlog.WriteLogger):
    """structlog's WriteLogger with the name it was asked for, which `add_logger_name` writes."""

    def __init__(self, file: TextIO, name: str | None = None) -> None:
        super().__init__(file)
        self.name = name


def _orjson_text(event: dict[str, Any], **_: Any) -> str:
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson refuses (an integer past 64 bits, a tuple as a key) is written plainly
        return json.dumps(_plain(event), default=repr)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key if isinstance(key, str) else str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Our structlog lines are rendered by structlog itself and written straight to stdout; the stdlib
    loggers (Faust, aiokafka) go through a logging handler that renders them the same way. Through the
    stdlib (as before) a line cost 71 us, which every assignment request pays once; rendered here with
    orjson, 11 us."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    shared = [
        structlog.contextvars.merge_contextvars,
        add_record_coordinates,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer(serializer=_orjson_text)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    out = sys.stdout
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ValueError(f"unknown log level {level!r}: one of {', '.join(sorted(levels))}")
    threshold = levels[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=lambda name=None, *_: NamedWriteLogger(out, name),
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
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
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    # aiokafka logs every coordinator hiccup at WARNING/ERROR while a broker starts; keep INFO noise down.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
