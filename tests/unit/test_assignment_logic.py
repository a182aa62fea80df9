"""Request validation, ranking and the answers' exact shapes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from schemas.models import AssignmentRequested
from streams.logic import assignment as decide
from streams.logic.scoring import ScoreWeights

AT = datetime(2024, 1, 15, 10, 30, 5, tzinfo=UTC)
GOOD = {"restaurantLatitude": 40.7128, "restaurantLongitude": -74.006, "customerLatitude": 40.7589,
        "customerLongitude": -73.9851}


@pytest.mark.parametrize(
    "change",
    [{"restaurantLatitude": 91}, {"customerLongitude": -180.5}, {"restaurantLongitude": "12"},
     {"customerLatitude": None}, {"restaurantLatitude": math.nan}, {"customerLatitude": math.inf},
     {"restaurantLatitude": True}],
)
def test_bad_coordinates_are_named(change):
    assert decide.coordinates_problem(GOOD | change) is not None


def test_good_coordinates_pass():
    assert decide.coordinates_problem(GOOD) is None
    assert decide.coordinates_problem(GOOD | {"restaurantLatitude": 90, "customerLongitude": -180}) is None


def test_answers_have_exactly_the_seeds_shapes():
    assert decide.assigned("order_123", "driver_456", 25, AT).record() == {
        "orderId": "order_123", "driverId": "driver_456", "eta": 25,
        "assignedAt": "2024-01-15T10:30:05.000Z", "status": "assigned"}
    assert decide.failed("order_123", decide.NO_DRIVERS, AT).record() == {
        "orderId": "order_123", "error": "No available drivers in area",
        "failedAt": "2024-01-15T10:30:05.000Z", "status": "failed"}


@pytest.mark.parametrize("decision", [decide.assigned("o", "d", 7, AT), decide.failed("o", decide.NO_DRIVERS, AT)])
def test_a_decision_kept_as_its_record_reads_back_the_same_and_answers_with_it(decision):
    assert decide.Decision.from_record(decision.record()) == decision
    assert decision.response().model_dump(exclude_none=True, mode="json") == decision.record()


def test_rank_puts_the_nearest_first_and_breaks_ties_by_id():
    request = AssignmentRequested.model_validate({"orderId": "o", "preparationTime": 15, **GOOD})
    ranked = decide.rank([("b", 1.0), ("a", 1.0), ("c", 0.5), ("far", 4.0)], request, ScoreWeights())
    assert [c.driver_id for c in ranked] == ["c", "a", "b", "far"]


def test_assigned_decisions_last_their_retention_and_failures_expire_sooner():
    now_ms = int(AT.timestamp() * 1000)
    day = 86_400_000
    assert decide.reusable(decide.assigned("o", "d", 3, AT - timedelta(hours=23)), now_ms, 60_000, day)
    assert not decide.reusable(decide.assigned("o", "d", 3, AT - timedelta(hours=25)), now_ms, 60_000, day)
    assert decide.reusable(decide.failed("o", decide.NO_DRIVERS, AT - timedelta(seconds=10)), now_ms, 60_000, day)
    assert not decide.reusable(decide.failed("o", decide.NO_DRIVERS, AT - timedelta(seconds=61)), now_ms, 60_000, day)


def test_decided_at_is_the_assignment_or_the_failure_time():
    assert decide.assigned("o", "d", 3, AT).decided_at_ms() == int(AT.timestamp() * 1000)
    assert decide.failed("o", decide.NO_DRIVERS, AT).decided_at_ms() == int(AT.timestamp() * 1000)


def test_a_request_is_expired_once_its_decision_could_be_gone_allowing_for_the_senders_clock():
    retention, skew = 3_600_000, 60_000
    sent = 1_000_000_000
    assert not decide.expired_request(sent, sent + retention - skew - 1, retention, skew)
    assert decide.expired_request(sent, sent + retention - skew, retention, skew)
    assert decide.expired_request(sent, sent + 2 * retention, retention, skew)




def test_a_new_decision_always_sends_its_driver_the_trip():
    decision = decide.assigned("o1", "d1", 4, AT)
    assert decide.assign_due(decision, decided_before=False, holder=None)


def test_a_decision_made_before_sends_the_trip_only_while_the_reservation_holds_the_order():
    decision = decide.assigned("o1", "d1", 4, AT)
    assert decide.assign_due(decision, decided_before=True, holder="o1")
    assert not decide.assign_due(decision, decided_before=True, holder=None)  # the trip closed, the driver free
    assert not decide.assign_due(decision, decided_before=True, holder="o2")  # the driver on a later order


def test_a_failure_sends_no_trip():
    assert not decide.assign_due(decide.failed("o1", decide.NO_DRIVERS, AT), decided_before=False, holder=None)
