"""The reference consumer's order state machine: one driver for good, repeats change nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from consumers.orders import transition
from schemas.models import AssignmentResponse

AT = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)


def assigned(driver: str) -> AssignmentResponse:
    return AssignmentResponse(orderId="o1", status="assigned", driverId=driver, eta=20, assignedAt=AT)


FAILED = AssignmentResponse(orderId="o1", status="failed", error="No available drivers in area", failedAt=AT)


def test_first_answer_notifies_and_a_repeat_does_not():
    first = transition(None, assigned("d1"))
    assert first.notification == "driver_assigned" and first.state.driver_id == "d1"
    again = transition(first.state, assigned("d1"))
    assert again.notification is None and again.state.driver_id == "d1" and again.state.answers == 2


def test_an_assignment_after_a_failure_wins():
    failed = transition(None, FAILED)
    assert failed.notification == "assignment_failed" and failed.state.status == "failed"
    retried = transition(failed.state, assigned("d2"))
    assert retried.notification == "driver_assigned" and retried.state.status == "assigned"


def test_a_failure_after_an_assignment_and_a_second_driver_are_ignored():
    state = transition(None, assigned("d1")).state
    after_failure = transition(state, FAILED)
    assert after_failure.notification is None and after_failure.state.status == "assigned"
    second_driver = transition(state, assigned("d9"))
    assert second_driver.notification is None
    assert second_driver.state.driver_id == "d1" and second_driver.state.conflicts == 1
