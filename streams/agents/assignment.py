"""Assignment: every request answered once, by the best free driver, reserved atomically in Redis.

Requests come in blocks (streams.agents.requests reads them), and a block is decided together: one
candidate search and one reservation call to Redis per round for all its requests, their decisions
written and their answers sent together, and each request done once its answer is acknowledged."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from schemas.codec import InvalidMessage
from schemas.dead_letter import trace_headers
from schemas.models import AssignmentRequested, DriverCommand
from streams.dlq import give_up, timestamp_ms
from streams.index import now_ms
from streams.logging import handling_record
from streams.logic import assignment as decide
from streams.logic import matching
from streams.logic.assignment import Decision
from streams.logic.backoff import attempts_within
from streams.logic.scoring import Candidate, eta_minutes
from streams.retry import with_retries
from streams.routing import misrouted, reroute
from streams.runtime import Runtime
from streams.topics import send_all

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
    attempts = max(s.retry_attempts, attempts_within(s.assignment_retry_s, s.retry_base_s, s.retry_max_s))
    return await with_retries(action, STAGE, runtime.metrics, attempts, s.retry_base_s, s.retry_max_s)


@dataclass
class Answer:
    """A request's answer in the making: its decision, how it came about (`outcome`: assigned, failed
    or repeated) and what its log line says besides."""

    message: Any
    decision: Decision
    outcome: str
    context: dict[str, Any] = field(default_factory=dict)
    kept: bool = False  # the decision is the one the decisions table holds for the order
    assign: bool = False  # the driver is sent the trip with it (decide.assign_due)

    @property
    def decided_before(self) -> bool:
        """Decided before this request was read: kept in the table, or found in Redis (`reused`)."""
        return self.kept or bool(self.context.get("reused"))


@dataclass
class Block:
    """What a block of requests comes to before anything is sent."""

    answers: list[Answer] = field(default_factory=list)
    choices: list[tuple[Any, AssignmentRequested]] = field(default_factory=list)  # to decide together
    reroutes: list[tuple[Any, bytes, int]] = field(default_factory=list)
    failures: list[tuple[Any, Exception]] = field(default_factory=list)


# The wait for the acknowledgements of a block's answers, returned when the block is decided.
Completion = Callable[[], Awaitable[None]]


async def decide_requests(runtime: Runtime, records: list[Any]) -> Completion:
    """Decides a block of requests and sends their answers (and assigned drivers' trips); returns the
    wait for the broker to take them, after which each answer is counted and logged. A request that
    cannot be answered (no order id, a key that is not its order's) is dead-lettered with its reason;
    one misrouted is moved to its order's partition (streams.routing) and answered there."""
    await runtime.codec.prefetch(message.value for message in records)  # registry ids: no I/O in _examine
    block = _examine(runtime, records)
    for message, order_key, target in block.reroutes:
        await reroute(runtime, message, order_key, target, STAGE)
    for message, exc in block.failures:
        await give_up(runtime.dead_letters, message, STAGE, exc)
    if block.choices:
        chosen = await _choose(runtime, [request for _, request in block.choices])
        for (message, _), choice in zip(block.choices, chosen, strict=True):
            if isinstance(choice, Exception):
                # No decision was recorded for it: dead-lettered with the failure (replayed, it is decided
                # then, or given the decision made meanwhile).
                await give_up(runtime.dead_letters, message, STAGE, choice)
            else:
                decision, context = choice
                block.answers.append(Answer(message, decision, decision.status, context))
    answers = await _with_assigns(runtime, block.answers)
    return await _send_answers(runtime, answers)


async def _with_assigns(runtime: Runtime, answers: list[Answer]) -> list[Answer]:
    """The answers with whether each sends its driver the trip (decide.assign_due). A decision made
    before needs its driver's reservation read; when Redis stays unreachable for that, its request is
    dead-lettered (replayed, it is answered then) rather than answered with a command that may be stale."""
    earlier = [answer for answer in answers if answer.decision.assigned and answer.decided_before]
    holders: dict[str, str | None] = {}
    if earlier:
        drivers = [answer.decision.driver_id for answer in earlier]
        try:
            holders = dict(zip(drivers, await _retrying(runtime, lambda: runtime.index.reservation_holders(drivers)),
                               strict=True))
        except Exception as exc:
            for answer in earlier:
                await give_up(runtime.dead_letters, answer.message, STAGE, exc)
            answers = [answer for answer in answers if not (answer.decision.assigned and answer.decided_before)]
    for answer in answers:
        answer.assign = decide.assign_due(answer.decision, answer.decided_before,
                                          holders.get(answer.decision.driver_id or ""))
        if answer.decided_before and answer.decision.assigned and not answer.assign:
            answer.context["trip_not_resent"] = "the driver's reservation no longer holds the order"
    return answers


def _examine(runtime: Runtime, records: list[Any]) -> Block:
    """Sorts a block's requests: those answered from what the worker already knows (a decision kept for
    the order, an expired or invalid request), those to decide, those to move, those to dead-letter."""
    codec, settings, decisions = runtime.codec, runtime.settings, runtime.decisions
    retention_ms = settings.decision_retention_s * 1000
    failed_ttl_ms = settings.failed_decision_ttl_s * 1000
    skew_ms = int(settings.max_future_skew_s * 1000)
    block, now, at = Block(), now_ms(), datetime.now(UTC)
    for message in records:
        try:
            raw = codec.decode_raw(AssignmentRequested, message.value)
            order_id = _order_id(raw)
            order_key = order_id.encode()
            if message.key is not None and message.key != order_key:
                raise InvalidMessage(f"record key {message.key[:64]!r} is not the request's orderId", "key")
        except Exception as exc:  # dead-lettered (give_up logs the unexpected)
            block.failures.append((message, exc))
            continue
        target = misrouted(order_key, message.partition, settings.partitions)
        if target is not None:
            block.reroutes.append((message, order_key, target))
            continue
        previous = decisions.get(order_id)
        if previous is not None and decide.reusable(previous, now, failed_ttl_ms, retention_ms):
            block.answers.append(Answer(message, previous, "repeated", kept=True))
            continue
        sent_at_ms = timestamp_ms(message)
        if decide.expired_request(sent_at_ms, now, retention_ms, skew_ms):
            block.answers.append(Answer(message, decide.failed(order_id, decide.REQUEST_EXPIRED, at), "failed",
                                        {"sent_at_ms": sent_at_ms,
                                         "decision_retention_s": settings.decision_retention_s}))
        elif (problem := decide.coordinates_problem(raw)) is not None:
            block.answers.append(Answer(message, decide.failed(order_id, decide.INVALID_COORDINATES, at), "failed",
                                        {"problem": problem}))
        else:
            try:
                block.choices.append((message, codec.validate(AssignmentRequested, raw)))
            except InvalidMessage as exc:
                block.answers.append(Answer(message, decide.failed(order_id, f"Invalid request: {exc}", at),
                                            "failed", {"problem": str(exc)}))
    return block


# A request's decision and its log line's account of it, or why it could not be decided.
Choice = tuple[Decision, dict[str, Any]] | Exception


async def _choose(runtime: Runtime, requests: list[AssignmentRequested]) -> list[Choice]:
    """Each request's decision: the best candidate still free, reserved, earlier requests first. The
    score never rises with distance, so the nearest few drivers hold the best; requests whose
    candidates were all taken (by earlier requests or other workers) search again among more, until
    the search finds fewer than it asked for or MAX_CANDIDATES. When Redis fails for good midway, the
    requests decided by then keep their decisions (their drivers are reserved for them) and the others
    get the failure.

    A decision is stamped by Redis in the step that reserves its driver (RegionIndex.reserve_first),
    neither when the request arrived nor when the search found the driver: retries across a Redis
    outage or a slow link can take seconds, in which the driver may finish an earlier trip, and an
    assignedAt from before that would claim the driver held two orders at once."""
    decisions: list[Decision | None] = [None] * len(requests)
    contexts: list[dict[str, Any]] = [{"candidates": 0} for _ in requests]
    failure: Exception = AssertionError("left undecided")  # every request is decided unless Redis failed
    try:
        await _decide_into(runtime, requests, decisions, contexts)
    except Exception as exc:
        failure = exc
    return [(decision, context) if decision is not None else failure
            for decision, context in zip(decisions, contexts, strict=True)]


async def _decide_into(runtime: Runtime, requests: list[AssignmentRequested], decisions: list[Decision | None],
                       contexts: list[dict[str, Any]]) -> None:
    settings, metrics = runtime.settings, runtime.metrics
    fresh_since = now_ms() - int(settings.location_max_age_s * 1000)
    retention_s = settings.decision_retention_s
    tried: list[set[str]] = [set() for _ in requests]
    open_, unserved, count = list(range(len(requests))), [], settings.candidates_wanted
    while open_:
        searches = [(requests[i].restaurantLatitude, requests[i].restaurantLongitude, requests[i].radius)
                    for i in open_]
        found = await _retrying(runtime, lambda n=count, s=searches: runtime.index.candidates(s, n, fresh_since))
        ranked = [
            decide.rank(((d.driver_id, km) for d, km in drivers if d.driver_id not in tried[i]), requests[i],
                        runtime.weights)
            for i, (drivers, _) in zip(open_, found, strict=True)
        ]
        if settings.matching == "batch":
            metrics.matched_windows.observe(len(open_))
            ranked = _matched([requests[i].orderId for i in open_], ranked)
        offers = [(requests[i].orderId, [(c.driver_id, eta_minutes(c)) for c in cands])
                  for i, cands in zip(open_, ranked, strict=True)]
        found_in = {d.driver_id: d.shard for drivers, _ in found for d, _ in drivers}
        reservations = await _retrying(
            runtime, lambda o=offers, f=found_in: runtime.index.reserve_first(o, fresh_since, retention_s, f))
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
            decisions[i] = reservation.decision
        open_, count = still_open, count * 4
    if not unserved:
        return
    for i in unserved:
        metrics.assignment_candidates.observe(contexts[i]["candidates"])
    at = datetime.now(UTC)
    failures = [decide.failed(requests[i].orderId, decide.NO_DRIVERS, at) for i in unserved]
    ttl = settings.failed_decision_ttl_s
    # Each the order's decision: its failure, or the decision another worker made meanwhile.
    recorded = await _retrying(runtime, lambda: runtime.index.record_failures(failures, ttl))
    for i, decision in zip(unserved, recorded, strict=True):
        decisions[i] = decision


def _matched(order_ids: list[str], ranked: list[list[Candidate]]) -> list[list[Candidate]]:
    """Batch matching: each order's candidates in the order the reservation tries them, its match
    first (streams.logic.matching). An order a block holds twice is matched once: its other copies
    offer no driver and get the decision of the first."""
    first_of: dict[str, int] = {}
    unique = [cands if first_of.setdefault(order_id, i) == i else []
              for i, (order_id, cands) in enumerate(zip(order_ids, ranked, strict=True))]
    return matching.offered(unique, matching.optimal(unique))


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


def answer_record(codec: Any, decision: Decision, request: Any) -> dict[str, Any]:
    """The answer's record to `request`: keyed by its order, and carrying the request's W3C trace context
    (traceparent, tracestate; docs/CONTRACT.md) so a trace goes on from the request to its answer."""
    return {"key": decision.order_id.encode(), "value": codec.encode(decision.response()),
            "headers": trace_headers(request.headers) or None}


async def _send_answers(runtime: Runtime, answers: list[Answer]) -> Completion:
    """Writes each new decision to the table, sends every answer (after its driver's trip command),
    and returns the wait for the broker to take them, after which each is counted and logged."""
    codec, topics, now = runtime.codec, runtime.topics, datetime.now(UTC)
    outgoing: list[tuple[Any, dict[str, Any]]] = []
    for answer in answers:
        decision = answer.decision
        if not answer.kept:
            await runtime.decisions.put(decision, answer.message.partition)
        if answer.assign:
            # Sent again with a repeated answer while the reservation holds (decide.assign_due); applying
            # it twice is a no-op (apply_assignment).
            command = DriverCommand(driver_id=decision.driver_id, kind="assign", order_id=decision.order_id, ts=now)
            outgoing.append((topics.driver_commands, {"key": decision.driver_id.encode(),
                                                      "value": codec.encode(command)}))
        outgoing.append((topics.responses, answer_record(codec, decision, answer.message)))
    acknowledgements = await send_all(outgoing)

    async def taken() -> None:
        sent = iter(acknowledgements)
        for answer in answers:
            with handling_record(answer.message):
                try:
                    for _ in range(2 if answer.assign else 1):
                        await next(sent)
                except Exception as exc:
                    await give_up(runtime.dead_letters, answer.message, STAGE, exc)
                    continue
                _count_and_log(runtime, answer)

    return taken


def _count_and_log(runtime: Runtime, answer: Answer) -> None:
    message, decision = answer.message, answer.decision
    latency = max(0.0, time.time() - timestamp_ms(message) / 1000)
    m = runtime.metrics
    m.assignment_latency.observe(latency)
    m.assignment_latency_window.observe(latency)
    m.assignment_requests.labels(region=message.topic.rsplit(".", 1)[-1], outcome=answer.outcome).inc()
    if not decision.assigned:
        m.assignment_failures.labels(reason=str(decision.error).split(":")[0]).inc()
    if runtime.supply_demand is not None:  # the demand of the restaurant's cell (streams.supply_demand)
        runtime.supply_demand.answered(message, decision.status, decision.error)
    log.info("assignment_decided", orderId=decision.order_id, outcome=answer.outcome, status=decision.status,
             driverId=decision.driver_id, eta=decision.eta, error=decision.error,
             latency_ms=round(latency * 1000, 2), **answer.context)
