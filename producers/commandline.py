"""What every producer and consumer command shares: running a coroutine with exit codes scripts can trust.
0 done, 1 failed (a delivery, a record), 2 bad usage (click's), 3 nothing could be reached."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click
import structlog

from producers.publisher import BrokerUnreachable, RecordTooLarge

T = TypeVar("T")
EXIT_FAILED = 1
EXIT_UNREACHABLE = 3

log = structlog.get_logger(__name__)


class Unreachable(RuntimeError):
    """A server (Kafka, Redis, a worker) the command needs did not answer."""


def settings():
    """The settings object, built once per command from the environment; also sets up logging."""
    from infra.settings import Settings

    built = Settings()
    configure_logging(built.log_level)
    return built


def configure_logging(level: str = "INFO") -> None:
    """Commands print their results on stdout; their logs go to stderr so pipes stay clean. Below WARNING
    only when asked (GEODISPATCH_LOG_LEVEL=DEBUG), since an operator reads the command's own output."""
    asked = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    threshold = logging.WARNING if asked == logging.INFO else asked
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False) if sys.stderr.isatty() else structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs the command's coroutine; unreachable servers exit 3, refused records exit 1, with one clear line."""
    try:
        return asyncio.run(coro)
    except (BrokerUnreachable, Unreachable) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except RecordTooLarge as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
