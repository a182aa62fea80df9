"""The fault suite's checker can fail: each fault written into an otherwise clean history is reported,
and the clean history passes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from schemas import AssignmentRequested, AssignmentResponse, default_codec
from schemas import dead_letter as dl
from tests.faults.checker import (
    Answer,
    DeadLetter,
    History,
    Overlap,
    Request,
    TripEnd,
    answer_from_record,
    check,
    dead_letter_from_record,
    request_from_record,
)

REQ = "t.driver_assignment.requests.4_-7"


def clean() -> History:
    """Three orders: o1 to d1 (delivered), o2 to d1 afterwards (open), o3 failed, o4 dead-lettered."""
    return History(
        requests=[Request("o1", REQ, 0, 0), Request("o2", REQ, 0, 1), Request("o3", REQ, 1, 0),
                  Request("o4", REQ, 1, 1)],
        answers=[
            Answer("o1", "assigned", "d1", 0, 0, at_ms=1_000),
            Answer("o2", "assigned", "d1", 1, 0, at_ms=5_000),
            Answer("o3", "failed", None, 0, 1, at_ms=1_500, error="No available drivers in area"),
        ],
        dead_letters=[DeadLetter("o4", REQ, 1, 1)],
        trip_ends=[TripEnd("o1", "d1", at_ms=4_000)],
        reservations={"d1": "o2"},
        decisions={"o1": "d1", "o2": "d1"},
        sessions={"d1": {"trip_id": "o2", "last_loc": {"lat": 40.0, "lng": -74.0}},
                  "d2": {"trip_id": None, "last_loc": {"lat": 41.0, "lng": -73.0}}},
        last_pings={"d1": (40.0, -74.0), "d2": (41.0, -73.0)},
        consumed={(REQ, 0): [0, 1], (REQ, 1): [0, 1]},
    )


def test_a_clean_history_passes():
    report = check(clean())
    assert report.ok, report.explain()
    assert report.figures()["requests in"] == 4
    assert report.figures()["lost"] == 0
    assert report.figures()["dead-lettered"] == 1


def test_a_lost_request_is_reported():
    history = clean()
    history.requests.append(Request("o5", REQ, 0, 2))
    history.consumed[(REQ, 0)].append(2)
    report = check(history)
    assert report.lost == ["o5"]
    assert not report.ok
    assert "lost" in report.explain()


def test_a_request_sent_twice_and_answered_once_is_not_lost():
    history = clean()
    history.requests.append(Request("o1", REQ, 0, 2))
    history.consumed[(REQ, 0)].append(2)
    assert check(history).ok


def test_a_double_assignment_is_reported():
    history = clean()
    # o5 takes d1 while o2 still holds it (o2 never delivered).
    history.requests.append(Request("o5", REQ, 0, 2))
    history.consumed[(REQ, 0)].append(2)
    history.answers.append(Answer("o5", "assigned", "d1", 1, 1, at_ms=6_000))
    history.decisions["o5"] = "d1"
    report = check(history)
    assert report.double_assignments == [Overlap("d1", "o2", "o5")]
    assert not report.ok


def test_reassigning_a_freed_driver_is_not_a_double_assignment():
    history = clean()  # o1 then o2 on d1, o1 delivered at 4 s, o2 assigned at 5 s
    assert check(history).double_assignments == []
    history.trip_ends = [TripEnd("o1", "d1", at_ms=6_000)]  # delivered only after o2 took d1
    assert check(history).double_assignments == [Overlap("d1", "o1", "o2")]


def test_a_decision_from_a_clock_running_ahead_is_no_double_assignment():
    # o1's worker ran 30 s ahead: its answer says 31 s, after o1's own delivery (4 s) and o2's hold (5 s on).
    history = clean()
    history.answers[0] = replace(history.answers[0], at_ms=31_000)
    assert check(history).ok, check(history).explain()
    # A real overlap is still found: o5 takes d1 while o2 (open) holds it, stamped ahead or not.
    history.requests.append(Request("o5", REQ, 0, 2))
    history.consumed[(REQ, 0)].append(2)
    history.answers.append(Answer("o5", "assigned", "d1", 1, 1, at_ms=36_000))
    history.decisions["o5"] = "d1"
    assert check(history).double_assignments == [Overlap("d1", "o2", "o5")]


def test_a_session_restored_to_a_skewed_writers_entry_is_reported():
    # The clock-step fault on wall-clock tokens: d2 took o6 from the worker 30 s ahead, and the owner
    # after it recorded o6's delivery with a lower token. A cold restore kept the skewed entry (o6 on
    # its trip), and the index rebuild made the reservation again from it.
    history = clean()
    history.requests.append(Request("o6", REQ, 0, 2))
    history.consumed[(REQ, 0)].append(2)
    history.answers.append(Answer("o6", "assigned", "d2", 0, 2, at_ms=36_000))
    history.trip_ends.append(TripEnd("o6", "d2", at_ms=7_500))
    history.decisions["o6"] = "d2"
    assert check(history).ok, check(history).explain()  # the healthy history, stamped ahead
    history.sessions["d2"]["trip_id"] = "o6"
    history.reservations["d2"] = "o6"
    report = check(history)
    assert report.session_mismatches == ["d2's session shows trip_id 'o6' but holds no open order"]
    assert report.reservation_mismatches == ["Redis holds d2 for o6, but no open answer on the topic says so"]
    assert not report.ok


def test_an_identical_duplicate_is_reported_but_allowed():
    history = clean()
    history.answers.append(Answer("o2", "assigned", "d1", 1, 7, at_ms=5_000))
    report = check(history)
    assert report.duplicates == {"o2": 1}
    assert report.figures()["duplicates delivered"] == 1
    assert report.ok, report.explain()


def test_two_drivers_for_one_order_are_inconsistent():
    history = clean()
    history.answers.append(Answer("o2", "assigned", "d2", 1, 7, at_ms=5_100))
    report = check(history)
    assert "o2" in report.inconsistent
    assert not report.ok


def test_an_assignment_contradicted_by_a_later_failure_is_inconsistent():
    history = clean()
    history.answers.append(Answer("o2", "failed", None, 1, 7, at_ms=5_100, error="No available drivers in area"))
    assert "o2" in check(history).inconsistent


def test_a_failure_then_an_assignment_on_retry_is_allowed():
    history = clean()
    history.answers.append(Answer("o3", "assigned", "d2", 0, 9, at_ms=90_000))
    history.reservations["d2"] = "o3"
    history.decisions["o3"] = "d2"
    history.sessions["d2"]["trip_id"] = "o3"
    report = check(history)
    assert report.inconsistent == {}
    assert report.ok, report.explain()


def test_a_skipped_offset_is_reported():
    history = clean()
    history.consumed[(REQ, 0)] = [0, 2, 3]  # 1 skipped: a gap inside what was consumed
    history.consumed[(REQ, 1)] = [0]  # the input record at offset 1 never consumed
    report = check(history)
    assert report.skipped_offsets == {(REQ, 0): [1], (REQ, 1): [1]}
    assert report.figures()["skipped offsets"] == 2
    assert not report.ok


def test_a_reservation_without_an_answer_is_reported():
    history = clean()
    history.reservations["d2"] = "o9"
    report = check(history)
    assert any("d2" in line and "o9" in line for line in report.reservation_mismatches)
    assert not report.ok


def test_an_answer_without_a_reservation_is_reported():
    history = clean()
    history.reservations = {}
    assert any("o2" in line for line in check(history).reservation_mismatches)


def test_a_decision_that_differs_from_the_topic_is_reported():
    history = clean()
    history.decisions["o2"] = "d2"
    assert any("o2" in line for line in check(history).reservation_mismatches)


def fenced() -> History:
    """The clean history and o5, decided by a worker cut from Kafka but not from Redis (a fenced
    zombie): it reserved d2 and recorded o5 -> d2 in Redis, but its answer could not reach the topic.
    The partition's new owner read o5 again, found that decision (decide.lua's 'existing') and gave
    it; the zombie's own answer went out after the heal, identical, at a later offset."""
    history = clean()
    history.requests.append(Request("o5", REQ, 0, 2))
    history.consumed[(REQ, 0)].append(2)
    history.answers += [Answer("o5", "assigned", "d2", 1, 1, at_ms=8_000),  # the new owner's
                        Answer("o5", "assigned", "d2", 1, 2, at_ms=8_000)]  # the zombie's, late
    history.reservations["d2"] = "o5"
    history.decisions["o5"] = "d2"
    history.sessions["d2"]["trip_id"] = "o5"
    return history


def test_a_reservation_by_a_fenced_worker_that_the_new_owner_answered_passes():
    report = check(fenced())
    assert report.ok, report.explain()
    assert report.duplicates == {"o5": 1}
    # Without the zombie's late answer too: a decision made in Redis and given by another worker.
    history = fenced()
    history.answers.pop()
    assert check(history).ok, check(history).explain()


def test_a_fenced_workers_decision_the_new_owner_contradicted_is_reported():
    # The new owner decided o5 afresh (d3) instead of giving the zombie's decision: Redis holds d2 for o5.
    history = fenced()
    history.answers[-2] = replace(history.answers[-2], driver_id="d3")
    history.answers.pop()  # the zombie's answer never came out
    history.sessions["d2"]["trip_id"], history.sessions["d3"] = None, {"trip_id": "o5", "last_loc": {}}
    report = check(history)
    assert not report.ok
    assert report.reservation_mismatches == [
        "Redis holds d2 for o5, but no open answer on the topic says so",
        "o5 assigned d3 on the topic, but Redis does not hold d3 for it",
        "o5 assigned d3 on the topic, Redis decided d2",
    ]
    # With the zombie's answer out too, the order has two drivers on the topic.
    history.answers.append(Answer("o5", "assigned", "d2", 1, 2, at_ms=8_000))
    assert check(history).inconsistent == {"o5": ["assigned:d3@1", "assigned:d2@2"]}


def test_after_a_redis_wipe_only_later_decisions_must_be_in_redis():
    history = clean()
    history.decisions = {"o2": "d1"}  # Redis was emptied at 3 s: o1's decision (at 1 s) went with it
    assert check(history).reservation_mismatches  # without the wipe's time, o1 is a mismatch
    history.decisions_since_ms = 3_000
    assert check(history).ok
    history.decisions = {}  # o2 was decided after the wipe: it must still be there
    assert any("o2" in line for line in check(history).reservation_mismatches)


def test_a_session_that_disagrees_with_the_answers_or_pings_is_reported():
    history = clean()
    history.sessions["d1"] = {"trip_id": None, "last_loc": {"lat": 40.0, "lng": -74.0}}
    history.sessions["d2"] = {"trip_id": "o1", "last_loc": {"lat": 0.0, "lng": 0.0}}
    problems = check(history).session_mismatches
    assert any(line.startswith("d1 holds o2") for line in problems)
    assert any(line.startswith("d2's session shows trip_id") for line in problems)
    assert any("last ping" in line for line in problems)


def test_every_fault_at_once_is_every_figure():
    history = clean()
    history.requests.append(Request("lost", REQ, 0, 5))
    history.answers += [
        Answer("o2", "assigned", "d1", 1, 8, at_ms=5_000),
        Answer("o1", "assigned", "d9", 0, 8, at_ms=1_000),
        Answer("o6", "assigned", "d1", 1, 9, at_ms=7_000),
    ]
    history.consumed[(REQ, 0)] = [0, 1, 5]
    figures = check(history).figures()
    assert figures["lost"] == 1
    assert figures["double assignments"] >= 1
    assert figures["duplicates delivered"] == 1
    assert figures["inconsistent answers"] == 1
    assert figures["skipped offsets"] == 3


def test_histories_are_built_from_raw_records():
    codec = default_codec()
    now = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
    request = AssignmentRequested(orderId="o1", restaurantLatitude=40.7, restaurantLongitude=-74.0,
                                  customerLatitude=40.8, customerLongitude=-73.9)
    assert request_from_record(REQ, 1, 3, b"o1", codec.encode(request, "avro")) == Request("o1", REQ, 1, 3)
    assert request_from_record(REQ, 1, 4, b"o9", b"\xff garbage").order_id == "o9"
    response = AssignmentResponse(orderId="o1", status="assigned", driverId="d1", eta=12, assignedAt=now)
    answer = answer_from_record(0, 7, codec.encode(response))
    assert replace(answer, at_ms=0) == Answer("o1", "assigned", "d1", 0, 7)
    assert answer.at_ms == int(now.timestamp() * 1000)
    headers = [(dl.ORIGINAL_TOPIC, REQ.encode()), (dl.ORIGINAL_PARTITION, b"1"), (dl.ORIGINAL_OFFSET, b"4")]
    assert dead_letter_from_record(b"o9", headers) == DeadLetter("o9", REQ, 1, 4)
