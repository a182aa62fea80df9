"""Dead letters carry their stack trace (cut to a sane size, UTF-8); a request's W3C trace context goes on
to its answer; the replay ledger's topic records read back as the ledger, and a replay decides one record
at a time what the list-wide plan decides."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from consumers.dlq import (
    ALREADY_REPLAYED,
    NO_ORIGIN,
    OVER_LIMIT,
    SEND,
    DeadLetter,
    ReplayRules,
    ledger_entries,
    ledger_record,
    plan_replay,
)
from schemas import dead_letter as dl
from schemas.codec import default_codec
from streams.agents.assignment import answer_record
from streams.logic.assignment import Decision

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SOURCE = dl.SourceRecord("p.driver_locations.4_-7", 3, 42, 1_700_000_000_000, b"k", b"v",
                         [("traceparent", TRACEPARENT), ("dlq.stage", b"old")])


def raised(error: Exception) -> Exception:
    def inner() -> None:
        raise error

    try:
        inner()
    except Exception as caught:
        return caught
    raise AssertionError("unreachable")


def test_a_dead_letter_carries_its_stack_trace_and_keeps_the_trace_context():
    headers = dl.dead_letter_headers(SOURCE, "sessions", raised(ValueError("bad lat")), 1, NOW)
    found = dl.header_dict(headers)
    trace = found[dl.ERROR_STACKTRACE]
    assert trace.startswith("Traceback (most recent call last):")
    assert "in inner" in trace and trace.endswith("ValueError: bad lat")
    assert found["traceparent"] == TRACEPARENT.decode()
    assert found[dl.STAGE] == "sessions"  # an earlier failure's dlq.* is replaced, not kept
    assert [name for name, _ in headers].count(dl.STAGE) == 1


def test_an_error_never_raised_has_its_one_line():
    assert dl.stacktrace(KeyError("x")) == b"KeyError: 'x'"


def test_a_long_stack_trace_loses_its_start_on_a_character_boundary():
    error = raised(RuntimeError("é" * 10_000))  # two UTF-8 bytes each
    cut = dl.stacktrace(error, limit=1001)
    assert len(cut) <= 1001
    text = cut.decode("utf-8")  # whole characters only
    assert text.startswith(dl.TRUNCATED) and text.endswith("é" * 100)
    assert len(dl.stacktrace(error)) <= dl.MAX_STACKTRACE_BYTES


def test_replay_headers_drop_the_stack_trace_with_the_other_dlq_headers():
    headers = dl.dead_letter_headers(SOURCE, "sessions", raised(ValueError("x")), 1, NOW)
    assert dl.replay_headers(headers, "p.dispatch.dlq:0:7") == [("traceparent", TRACEPARENT),
                                                                (dl.REPLAYED_FROM, b"p.dispatch.dlq:0:7")]


def test_trace_headers_are_traceparent_and_tracestate_only():
    headers = [("traceparent", TRACEPARENT), ("tracestate", b"congo=t61rcWkgMzE"), ("trace-id", b"abc"),
               ("Traceparent", b"x"), ("baggage", None)]
    assert dl.trace_headers(headers) == [("traceparent", TRACEPARENT), ("tracestate", b"congo=t61rcWkgMzE"),
                                         ("Traceparent", b"x")]
    assert dl.trace_headers(None) == [] and dl.trace_headers(()) == []


def test_an_answer_carries_its_requests_trace_context_and_no_other_header():
    decision = Decision("ord_1", "2026-01-15T12:00:00.000Z", driver_id="drv_1", eta=7)
    request = SimpleNamespace(headers=[("traceparent", TRACEPARENT), ("x-other", b"1")])
    record = answer_record(default_codec(), decision, request)
    assert record["key"] == b"ord_1" and record["headers"] == [("traceparent", TRACEPARENT)]
    assert answer_record(default_codec(), decision, SimpleNamespace(headers=None))["headers"] is None


def test_the_ledger_topic_reads_back_last_value_wins_and_tombstones_forget():
    first = ledger_record("p.dispatch.dlq:0:1", {"to": "a", "at": "t1", "fingerprint": "f1"})
    again = ledger_record("p.dispatch.dlq:0:1", {"to": "b", "at": "t2", "fingerprint": "f1"})
    other = ledger_record("p.dispatch.dlq:0:2", {"to": "a", "at": "t1", "fingerprint": "f2"})
    entries = ledger_entries([first, other, again, (b"p.dispatch.dlq:0:2", None), (None, b"{}"),
                              (b"p.dispatch.dlq:0:3", b"not json")])
    assert entries == {"p.dispatch.dlq:0:1": {"to": "b", "at": "t2", "fingerprint": "f1"},
                       "p.dispatch.dlq:0:3": {}}


def letter(offset: int, value: bytes = b"{}", topic: str | None = "p.driver_locations.4_-7") -> DeadLetter:
    headers = [(dl.ORIGINAL_TOPIC, topic.encode())] if topic else []
    return DeadLetter("p.dispatch.dlq", 0, offset, 0, b"k", value, tuple(headers), dl.header_dict(headers))


def test_rules_one_at_a_time_decide_what_the_plan_decides():
    letters = [letter(0, b"a"), letter(1, b"b"), letter(2, b"a"), letter(3, topic=None), letter(4, b"c"),
               letter(5, b"d")]
    ledger = {letters[0].id: {"fingerprint": letters[0].fingerprint}}
    rules = ReplayRules(ledger, again=False, limit=2, target=None)
    verdicts = [rules.verdict(x) for x in letters]
    assert verdicts == [ALREADY_REPLAYED, SEND, ALREADY_REPLAYED, NO_ORIGIN, SEND, OVER_LIMIT]
    assert rules.counts == {SEND: 2, ALREADY_REPLAYED: 2, NO_ORIGIN: 1, OVER_LIMIT: 1} and rules.selected == 6
    plan = plan_replay(letters, ledger, again=False, limit=2, target=None)
    assert [x.offset for x in plan.to_send] == [1, 4] and plan.over_limit == 1
