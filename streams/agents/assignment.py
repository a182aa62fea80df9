"""Assignment: every request answered once, by the best free driver, reserved atomically in Redis."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from schemas.codec import InvalidMessage
from schemas.models import AssignmentRequested, DriverCommand
from streams.app import app
from streams.dlq import Completion, process_overlapping
from streams.index import now_ms
from streams.logic import assignment as decide
from streams.logic.scoring import eta_minutes
from streams.retry import with_retries
from streams.routing import REROUTED_FROM, misrouted
from streams.runtime import Runtime
from streams.topics import send_all, send_confirmed

log = structlog.get_logger(__name__)
STAGE = "assignment"
# The widest search: past this many drivers within the radius, all taken, the area counts as empty.
MAX_CANDIDATES = 2000
# NonEmpty's limit in schemas.models, which every answer's orderId must meet.
ORDER_ID_MAX = 256


def _order_id(raw: dict[str, Any]) -> str:
    order_id = raw.get("orderId")
    if not isinstance(order_id, str) or not order_id.strip():
        raise InvalidMessage("missing or not a non-empty string: there is no order to answer", "orderId")
    if len(order_id) > ORDER_ID_MAX:
        # An answer could not carry it (AssignmentResponse refuses it): nothing to answer, dead-letter it.
        raise InvalidMessage(f"longer than {ORDER_ID_MAX} characters: no answer can carry it", "orderId")
    return order_id


async def _retrying(runtime: Runtime, action):
    s = runtime.settings
    return await with_retries(action, STAGE, runtime.metrics, s.retry_attempts, s.retry_base_s, s.retry_max_s)


async def _choose(runtime: Runtime, request: AssignmentRequested) -> tuple[dict, dict[str, Any]]:
    """Reserves the best candidate still free; returns the decision and what the log line needs.
    The score never rises with distance, so the nearest few drivers hold the best; when other orders
    take all of them first, the search widens to more.

    A decision is stamped when it is made, after the search found its driver free, not when the
    request arrived: retries across a Redis outage can take seconds, in which the driver may finish
    an earlier trip, and an assignedAt from before that would claim the driver held two orders at once."""
    settings = runtime.settings
    fresh_since = now_ms() - int(settings.location_max_age_s * 1000)
    count, tried = settings.candidates_wanted, set[str]()
    context: dict[str, Any] = {"candidates": 0}
    while True:
        found, maybe_more = await _retrying(
            runtime,
            lambda n=count: runtime.index.candidates(
                request.restaurantLatitude, request.restaurantLongitude, request.radius, n, fresh_since
            ),
        )
        ranked = decide.rank(((d.driver_id, km) for d, km in found if d.driver_id not in tried), request,
                             runtime.weights)
        context["candidates"] += len(ranked)
        for position, candidate in enumerate(ranked):
            tried.add(candidate.driver_id)
            reservation = await _retrying(
                runtime,
                lambda c=candidate: runtime.index.reserve(
                    c.driver_id,
                    request.orderId,
                    decide.assigned(request.orderId, c.driver_id, eta_minutes(c), datetime.now(UTC)),
                    fresh_since,
                ),
            )
            if reservation.outcome == "reserved":
                runner_up = ranked[position + 1] if position + 1 < len(ranked) else None
                context.update(score=round(candidate.score, 2), distance_km=round(candidate.distance_km, 3),
                               runner_up=runner_up.driver_id if runner_up else None,
                               runner_up_score=round(runner_up.score, 2) if runner_up else None)
                runtime.metrics.assignment_candidates.observe(context["candidates"])
                return reservation.decision, context
            if reservation.outcome == "existing":
                # This order was decided before (a redelivery after a crash, or another worker): keep it.
                context["reused"] = True
                return reservation.decision, context
            runtime.metrics.reservation_conflicts.inc()
        if not maybe_more or count >= MAX_CANDIDATES:
            break
        count *= 4
    runtime.metrics.assignment_candidates.observe(context["candidates"])
    failure = decide.failed(request.orderId, decide.NO_DRIVERS, datetime.now(UTC))
    ttl = settings.failed_decision_ttl_s
    recorded = await _retrying(runtime, lambda: runtime.index.record_failure(request.orderId, failure, ttl))
    return recorded, context


async def process(runtime: Runtime, message) -> Completion | None:
    codec = runtime.codec
    raw = codec.decode_raw(AssignmentRequested, message.value)
    order_id = _order_id(raw)
    order_key = order_id.encode()
    if message.key is not None and message.key != order_key:
        raise InvalidMessage(f"record key {message.key[:64]!r} is not the request's orderId", "key")
    target = misrouted(order_key, message.partition, runtime.settings.partitions)
    if target is not None:
        headers = [*(message.headers or ()), (REROUTED_FROM, f"{message.partition}@{message.offset}".encode())]
        # The original's timestamp kept: answer latency and a dead letter count from when it was sent.
        await send_confirmed(runtime.topics.named(message.topic), key=order_key, value=message.value,
                             partition=target, headers=headers, timestamp=message.timestamp)
        runtime.metrics.rerouted.labels(stream=STAGE).inc()
        return None
    region = message.topic.rsplit(".", 1)[-1]
    now = datetime.now(UTC)
    previous = runtime.decisions.get(order_id)
    if previous is not None and decide.reusable(previous, now_ms(), runtime.settings.failed_decision_ttl_s * 1000):
        # The trip command again too: the worker that decided may have died after the decision reached
        # the changelog but before the command did, and the driver's session would never hear of the
        # trip. Applying it twice is a no-op (apply_assignment).
        return await _answer(runtime, message, region, previous, "repeated", {}, _trip_command(runtime, previous, now))
    problem = decide.coordinates_problem(raw)
    if problem is not None:
        decision, context = decide.failed(order_id, decide.INVALID_COORDINATES, now), {"problem": problem}
    else:
        try:
            request = codec.validate(AssignmentRequested, raw)
        except InvalidMessage as exc:
            decision, context = decide.failed(order_id, f"Invalid request: {exc}", now), {"problem": str(exc)}
        else:
            decision, context = await _choose(runtime, request)
    await runtime.decisions.put(order_id, decision, message.partition)
    trip = _trip_command(runtime, decision, now)
    return await _answer(runtime, message, region, decision, decision["status"], context, trip)


def _trip_command(runtime: Runtime, decision: dict, now: datetime) -> list:
    """The `assign` command that tells an assigned driver's session of its trip (none for a failure)."""
    if decision["status"] != "assigned":
        return []
    command = DriverCommand(driver_id=decision["driverId"], kind="assign", order_id=decision["orderId"], ts=now)
    value = runtime.codec.encode(command)
    return [(runtime.topics.driver_commands, {"key": decision["driverId"].encode(), "value": value})]


async def _answer(
    runtime: Runtime, message, region: str, decision: dict, outcome: str, context: dict, also: list | None = None
) -> Completion:
    """Publishes the answer (and `also`, the driver's trip) and returns the wait for the broker to take
    both, after which the answer is counted and logged."""
    response = decide.response_of(decision)
    answer = (runtime.topics.responses, {"key": response.orderId.encode(), "value": runtime.codec.encode(response)})
    acknowledgements = await send_all([*(also or ()), answer])

    async def taken() -> None:
        for acknowledgement in acknowledgements:
            await acknowledgement
        latency = max(0.0, time.time() - message.timestamp)  # Faust gives the record time in seconds
        m = runtime.metrics
        m.assignment_latency.observe(latency)
        m.assignment_latency_window.observe(latency)
        m.assignment_requests.labels(region=region, outcome=outcome).inc()
        if response.status == "failed":
            m.assignment_failures.labels(reason=response.error.split(":")[0]).inc()
        log.info("assignment_decided", orderId=response.orderId, outcome=outcome, status=response.status,
                 driverId=response.driverId, eta=response.eta, error=response.error,
                 latency_ms=round(latency * 1000, 2), **context)

    return taken


@app.agent(app.runtime.topics.requests, name="assignments")
async def assignments(stream) -> None:
    runtime: Runtime = app.runtime
    await process_overlapping(stream, runtime.dead_letters, STAGE, functools.partial(process, runtime),
                              runtime.settings.answers_in_flight)
