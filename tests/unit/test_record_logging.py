"""Every log line written while a record is handled names it by its coordinates, and only then."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from types import SimpleNamespace

import pytest
import structlog

from streams.logging import configure_logging, handling_record


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


def _lines(write) -> list[dict]:
    out = io.StringIO()
    stdout, sys.stdout = sys.stdout, out
    try:
        configure_logging(fmt="json")
    finally:
        sys.stdout = stdout
    logging.getLogger().handlers[0].setStream(out)
    write()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _record(offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic="dispatch.requests.4_-7", partition=2, offset=offset)


def test_lines_inside_name_the_record_and_lines_outside_do_not() -> None:
    log = structlog.get_logger("test")

    def write() -> None:
        log.info("before")
        with handling_record(_record(41)):
            log.info("inside")
            logging.getLogger("aiokafka").warning("foreign")
            with handling_record(_record(42)):
                log.info("nested")
            log.info("inside_again")
        log.info("after")

    lines = {line["event"]: line for line in _lines(write)}
    assert "offset" not in lines["before"] and "offset" not in lines["after"]
    for event, offset in (("inside", 41), ("foreign", 41), ("nested", 42), ("inside_again", 41)):
        assert (lines[event]["topic"], lines[event]["partition"], lines[event]["offset"]) == (
            "dispatch.requests.4_-7", 2, offset)


def test_a_field_of_the_line_itself_wins() -> None:
    def write() -> None:
        with handling_record(_record(7)):
            structlog.get_logger("test").info("dead_lettered", topic="other", offset=3)

    (line,) = _lines(write)
    assert (line["topic"], line["partition"], line["offset"]) == ("other", 2, 3)


def test_concurrent_tasks_keep_their_own_record() -> None:
    async def handle(offset: int) -> None:
        with handling_record(_record(offset)):
            await asyncio.sleep(0)
            structlog.get_logger("test").info("handled", expected=offset)

    async def both() -> None:
        await asyncio.gather(handle(1), handle(2))

    lines = _lines(lambda: asyncio.run(both()))
    assert sorted((line["expected"], line["offset"]) for line in lines) == [(1, 1), (2, 2)]


def test_any_value_is_written_and_a_line_never_fails() -> None:
    def write() -> None:
        structlog.get_logger("test").info("odd", starts={0: 5, ("t", 1): None}, big=2**70, raw=b"\xff")
        structlog.get_logger("test").info("plain", partitions=[1, 2])

    odd, plain = _lines(write)
    assert odd["starts"] == {"0": 5, "('t', 1)": None} and odd["raw"] == "b'\\xff'"
    assert odd["big"] == 2**70 and plain["partitions"] == [1, 2]
