"""Operators' DLQ filters select what they say; a replay plan skips what was replayed before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from consumers.dlq import DeadLetter, Selection, parse_moment, plan_replay
from consumers.text import table
from schemas import dead_letter as dl

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def letter(offset: int, topic: str | None = "p.driver_locations.4_-7", error_class: str = "InvalidMessage",
           stage: str = "sessions", failed_at: datetime = NOW, value: bytes = b"{}") -> DeadLetter:
    headers = [(dl.STAGE, stage.encode()), (dl.ERROR_CLASS, error_class.encode()),
               (dl.FAILED_AT, dl.iso_utc(failed_at).encode()), ("trace", b"x")]
    if topic is not None:
        headers.append((dl.ORIGINAL_TOPIC, topic.encode()))
    return DeadLetter("p.dispatch.dlq", 0, offset, 0, b"k", value, tuple(headers), dl.header_dict(headers))


def test_topic_filter_takes_names_and_globs_with_or_without_the_prefix():
    letters = [letter(0), letter(1, "p.driver_assignment.requests.4_-7"), letter(2, "p.driver_status")]
    pick = lambda *topics: [x.offset for x in letters if Selection(topics=topics, prefix="p.").matches(x)]  # noqa: E731
    assert pick("driver_locations.4_-7") == [0]
    assert pick("p.driver_locations.4_-7") == [0]
    assert pick("driver_*") == [0, 1, 2]
    assert pick("driver_assignment.requests.*", "driver_status") == [1, 2]
    assert pick("trip_events") == []


def test_error_class_and_stage_match_exactly():
    letters = [letter(0), letter(1, error_class="InvalidEvent"), letter(2, stage="assignment")]
    assert [x.offset for x in letters if Selection(error_classes=("InvalidEvent",)).matches(x)] == [1]
    assert [x.offset for x in letters if Selection(error_classes=("Invalid",)).matches(x)] == []
    assert [x.offset for x in letters if Selection(stages=("assignment",)).matches(x)] == [2]


def test_time_range_is_since_inclusive_until_exclusive():
    letters = [letter(i, failed_at=NOW + timedelta(minutes=i)) for i in range(5)]
    selection = Selection(since=NOW + timedelta(minutes=1), until=NOW + timedelta(minutes=3))
    assert [x.offset for x in letters if selection.matches(x)] == [1, 2]


def test_moments_are_iso_or_ages():
    assert parse_moment("15m", now=NOW) == NOW - timedelta(minutes=15)
    assert parse_moment("2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_moment("1d", now=NOW) == NOW - timedelta(days=1)
    assert parse_moment("2026-01-15T10:00:00Z") == datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert parse_moment("2026-01-15T10:00:00") == datetime(2026, 1, 15, 10, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_moment("yesterday")


def test_replay_plan_skips_replayed_ids_and_copies_unless_again():
    first, second, copy_of_first = letter(0, value=b"a"), letter(1, value=b"b"), letter(7, value=b"a")
    ledger = {first.id: {"to": "t", "at": "x", "fingerprint": first.fingerprint}}
    plan = plan_replay([first, second, copy_of_first], ledger, again=False, limit=None, target=None)
    assert [x.offset for x in plan.to_send] == [1]
    assert [x.offset for x in plan.already_replayed] == [0, 7]
    again = plan_replay([first, second, copy_of_first], ledger, again=True, limit=None, target=None)
    assert [x.offset for x in again.to_send] == [0, 1, 7]


def test_replay_plan_limit_and_missing_origin():
    letters = [letter(0), letter(1, topic=None), letter(2), letter(3)]
    plan = plan_replay(letters, {}, again=False, limit=2, target=None)
    assert [x.offset for x in plan.to_send] == [0, 2]
    assert [x.offset for x in plan.no_origin] == [1]
    assert plan.over_limit == 1
    # with --to, a letter without an original topic still has somewhere to go
    assert len(plan_replay(letters, {}, again=False, limit=None, target="elsewhere").to_send) == 4


def test_replay_headers_keep_the_records_own_and_name_the_dead_letter():
    x = letter(5)
    headers = dl.replay_headers(x.headers, x.id)
    assert headers == [("trace", b"x"), (dl.REPLAYED_FROM, b"p.dispatch.dlq:0:5")]


def test_table_cuts_long_cells():
    lines = table([{"a": "x" * 50, "b": 1}], [("A", "a", 10), ("B", "b", 5)])
    assert lines[0].startswith("A ")
    assert lines[1].startswith("x" * 9 + "…")


def test_a_span_seeks_a_minute_before_since_and_reads_a_minute_past_until():
    from consumers.cli import SEEK_SLACK_MS, _span

    span = _span((0,), 5, NOW, NOW + timedelta(hours=1))
    assert span.partitions == (0,) and span.offset == 5
    assert span.since_ms == int(NOW.timestamp() * 1000) - SEEK_SLACK_MS
    assert span.until_ms == int((NOW + timedelta(hours=1)).timestamp() * 1000) + SEEK_SLACK_MS
    whole = _span((), None, None, None)
    assert (whole.partitions, whole.offset, whole.since_ms, whole.until_ms) == ((), None, None, None)


def test_consume_takes_one_start_only():
    from click.testing import CliRunner

    from consumers.cli import consume

    result = CliRunner().invoke(consume, ["driver_status", "--offset", "3", "--from-time", "10m"])
    assert result.exit_code == 2 and "give one start" in result.output
    bad_time = CliRunner().invoke(consume, ["driver_status", "--from-time", "yesterday"])
    assert bad_time.exit_code == 2
