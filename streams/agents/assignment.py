"""Assignment: every request answered once, by the best free driver, reserved atomically in Redis."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from schemas.codec import InvalidMessage
from schemas.models import AssignmentRequested, DriverCommand
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
# Under load, the waiting requests are decided at most this often. Each batch costs its two Redis calls
# and sends its answers in produce requests of their own, whatever its size: with Redis answering fast,
# batches decided back to back stay small and cost the worker more CPU per request than batches that
# wait this long (bench/README.md has the figures). A request arriving when no batch was decided for
# that long is decided at once.
DECIDE_EVERY_S = 0.01


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


# A request's decision (recorded in Redis) and what its log line needs.
Choice = tuple[dict, dict[str, Any]]


class Chooser:
    """Chooses the drivers of the requests being processed at once together: one candidate search and
    one reservation call to Redis per round for all of them, instead of two round trips (and two of
    redis-py's costly calls) per request. A request arriving while a batch is decided, or less than
    DECIDE_EVERY_S after it began, waits for the next, so batches grow with the load and a lone
    request is decided at once."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._waiting: list[tuple[AssignmentRequested, asyncio.Future]] = []
        # Held here: the event loop keeps only weak references to its tasks.
        self._decider: asyncio.Task | None = None
        self._last_decided = float("-inf")  # when the last batch began, on the event loop's clock

    async def choose(self, request: AssignmentRequested) -> Choice:
        choice = asyncio.get_running_loop().create_future()
        self._waiting.append((request, choice))
        if self._decider is None:
            # A context of its own: the batch's log lines must not name the record that started it.
            self._decider = asyncio.get_running_loop().create_task(self._decide_waiting(),
                                                                   context=contextvars.Context())
        return await choice

    async def _decide_waiting(self) -> None:
        batch: list[tuple[AssignmentRequested, asyncio.Future]] = []
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                wait = self._last_decided + DECIDE_EVERY_S - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._last_decided = loop.time()
                batch, self._waiting = self._waiting, []
                try:
                    await _choose_all(self._runtime, batch)
                except Exception as exc:
                    # A request already decided keeps its answer (its driver is reserved for it); each
                    # other answers for the failure (guarded: dead-lettered with it).
                    for _, choice in batch:
                        if not choice.done():
                            choice.set_exception(exc)
        finally:
            self._decider = None
            for _, choice in batch + self._waiting:  # cancelled midway: nobody may wait forever
                choice.cancel()


def _settle(choice: asyncio.Future, decision: dict, context: dict[str, Any]) -> None:
    if not choice.done():  # else its record's task was cancelled
        choice.set_result((decision, context))


async def _choose_all(runtime: Runtime, batch: list[tuple[AssignmentRequested, asyncio.Future]]) -> None:
    """Reserves for each request the best candidate still free, earlier requests first, and settles
    its choice as soon as it is decided. The score never rises with distance, so the nearest few
    drivers hold the best; requests whose candidates were all taken (by earlier requests or other
    workers) search again among more, until the search finds fewer than it asked for or
    MAX_CANDIDATES.

    A decision is stamped when it is made, after the search found its driver free, not when the
    request arrived: retries across a Redis outage can take seconds, in which the driver may finish
    an earlier trip, and an assignedAt from before that would claim the driver held two orders at once."""
    settings, metrics = runtime.settings, runtime.metrics
    requests = [request for request, _ in batch]
    fresh_since = now_ms() - int(settings.location_max_age_s * 1000)
    retention_s = settings.decision_retention_s
    contexts: list[dict[str, Any]] = [{"candidates": 0} for _ in requests]
    tried: list[set[str]] = [set() for _ in requests]
    open_, unserved, count = list(range(len(requests))), [], settings.candidates_wanted
    while open_:
        searches = [(requests[i].restaurantLatitude, requests[i].restaurantLongitude, requests[i].radius)
                    for i in open_]
        found = await _retrying(runtime, lambda n=count, s=searches: runtime.index.candidates(s, n, fresh_since))
        now = datetime.now(UTC)
        ranked = [
            decide.rank(((d.driver_id, km) for d, km in drivers if d.driver_id not in tried[i]), requests[i],
                        runtime.weights)
            for i, (drivers, _) in zip(open_, found, strict=True)
        ]
        offers = [
            (requests[i].orderId,
             [(c.driver_id, decide.assigned(requests[i].orderId, c.driver_id, eta_minutes(c), now)) for c in cands])
            for i, cands in zip(open_, ranked, strict=True)
        ]
        reservations = await _retrying(
            runtime, lambda o=offers: runtime.index.reserve_first(o, fresh_since, retention_s))
        still_open = []
        for i, cands, (_, maybe_more), reservation in zip(open_, ranked, found, reservations, strict=True):
            context = contexts[i]
            context["candidates"] += len(cands)
            if reservation.outcome == "none":
                metrics.reservation_conflicts.inc(len(cands))
                tried[i].update(c.driver_id for c in cands)
                (still_open if maybe_more and count < MAX_CANDIDATES else unserved).append(i)
                continue
            if reservation.outcome == "existing":
                # This order was decided before (a redelivery after a crash, or another worker): keep it.
                context["reused"] = True
            else:
                metrics.reservation_conflicts.inc(reservation.position - 1)
                metrics.assignment_candidates.observe(context["candidates"])
                context.update(_explained(cands, reservation.position - 1))
            _settle(batch[i][1], reservation.decision, context)
        open_, count = still_open, count * 4
    for i in unserved:
        metrics.assignment_candidates.observe(contexts[i]["candidates"])
        _settle(batch[i][1], await _record_failure(runtime, requests[i]), contexts[i])


def _explained(ranked: list, position: int) -> dict[str, Any]:
    """The log line's account of a choice: the chosen candidate's score and distance, and the next best."""
    chosen = ranked[position]
    runner_up = ranked[position + 1] if position + 1 < len(ranked) else None
    return {
        "score": round(chosen.score, 2),
        "distance_km": round(chosen.distance_km, 3),
        "runner_up": runner_up.driver_id if runner_up else None,
        "runner_up_score": round(runner_up.score, 2) if runner_up else None,
    }


async def _record_failure(runtime: Runtime, request: AssignmentRequested) -> dict:
    """No driver for the request: its failed decision, unless the order was decided meanwhile."""
    failure = decide.failed(request.orderId, decide.NO_DRIVERS, datetime.now(UTC))
    ttl = runtime.settings.failed_decision_ttl_s
    return await _retrying(runtime, lambda: runtime.index.record_failure(request.orderId, failure, ttl))


async def process(runtime: Runtime, chooser: Chooser, message) -> Completion | None:
    runtime.requests.read()
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
    settings, now = runtime.settings, datetime.now(UTC)
    retention_ms = settings.decision_retention_s * 1000
    previous = runtime.decisions.get(order_id)
    if previous is not None and decide.reusable(previous, now_ms(), settings.failed_decision_ttl_s * 1000,
                                                retention_ms):
        # The trip command again too: the worker that decided may have died after the decision reached
        # the changelog but before the command did, and the driver's session would never hear of the
        # trip. Applying it twice is a no-op (apply_assignment).
        return await _answer(runtime, message, region, previous, "repeated", {}, _trip_command(runtime, previous, now))
    sent_at_ms = int(message.timestamp * 1000)  # Faust gives the record time in seconds
    if decide.expired_request(sent_at_ms, now_ms(), retention_ms, int(settings.max_future_skew_s * 1000)):
        decision = decide.failed(order_id, decide.REQUEST_EXPIRED, now)
        context = {"sent_at_ms": sent_at_ms, "decision_retention_s": settings.decision_retention_s}
    elif (problem := decide.coordinates_problem(raw)) is not None:
        decision, context = decide.failed(order_id, decide.INVALID_COORDINATES, now), {"problem": problem}
    else:
        try:
            request = codec.validate(AssignmentRequested, raw)
        except InvalidMessage as exc:
            decision, context = decide.failed(order_id, f"Invalid request: {exc}", now), {"problem": str(exc)}
        else:
            decision, context = await chooser.choose(request)
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


async def assignments(runtime: Runtime, stream) -> None:
    handle = functools.partial(process, runtime, Chooser(runtime))
    await process_overlapping(stream, runtime.dead_letters, STAGE, handle, runtime.settings.answers_in_flight)
