"""Reconciles what went into the pipeline with what came out, after a fault-injection run.

Pure: it takes histories (plain records read from the topics, Redis and the sessions API) and
returns a Report; reading them is the fault test's job. Modelled on Jepsen's Kafka checker and
Kafka's own streams_eos_test verifier: every input request must have a final answer or a dead
letter (else it is *lost*), no driver may be held by two open orders at once (*double assignment*),
an order answered more than once is a *duplicate* (allowed under at-least-once if the answers agree,
and reported) or an *inconsistency* (two different drivers, or an assignment later contradicted),
and a consumer must not skip an offset (*skipped offsets*). Redis reservations and the final
sessions must agree with the answers on the topic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import dead_letter as dl
from schemas.codec import InvalidMessage, default_codec
from schemas.models import AssignmentRequested, AssignmentResponse

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class Request:
    """An AssignmentRequested record as it sits on its input topic."""

    order_id: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Answer:
    """An AssignmentResponse record; answers of one order share a partition, so offset orders them."""

    order_id: str
    status: str  # assigned | failed
    driver_id: str | None
    partition: int
    offset: int
    at_ms: int = 0  # assignedAt / failedAt (or the record timestamp), epoch ms
    error: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    key: str | None
    original_topic: str
    original_partition: int
    original_offset: int


@dataclass(frozen=True)
class TripEnd:
    """A delivered or cancelled TripEvent: the driver is free of this order from at_ms on."""

    order_id: str
    driver_id: str
    at_ms: int


@dataclass
class History:
    requests: list[Request] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    trip_ends: list[TripEnd] = field(default_factory=list)
    # Redis after the drain: driver -> order holding it (r:{driver}); order -> decided driver.
    reservations: dict[str, str] | None = None
    decisions: dict[str, str | None] | None = None
    # Only orders first assigned at or after this (epoch ms) must have their decision in Redis: a
    # Redis wiped empty forgets the decisions made before (the decisions table still has them).
    decisions_since_ms: int | None = None
    # Final sessions from the API: driver -> the session document (trip_id, last_loc, ...).
    sessions: dict[str, dict[str, Any]] | None = None
    # The newest ping per driver that the pipeline should have applied: driver -> (lat, lng).
    last_pings: dict[str, tuple[float, float]] | None = None
    # Offsets the pipeline consumed, per input partition (from its logs or a probe consumer).
    consumed: dict[TopicPartition, list[int]] | None = None


@dataclass(frozen=True)
class Overlap:
    driver_id: str
    first_order: str
    second_order: str


@dataclass
class Report:
    requests: int = 0
    answers: int = 0
    dead_lettered: int = 0
    lost: list[str] = field(default_factory=list)
    double_assignments: list[Overlap] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)  # order -> extra identical answers
    inconsistent: dict[str, list[str]] = field(default_factory=dict)  # order -> answers in offset order
    skipped_offsets: dict[TopicPartition, list[int]] = field(default_factory=dict)
    reservation_mismatches: list[str] = field(default_factory=list)
    session_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Duplicates that agree are allowed (at-least-once); everything else must be empty."""
        return not (
            self.lost or self.double_assignments or self.inconsistent or self.skipped_offsets
            or self.reservation_mismatches or self.session_mismatches
        )

    def figures(self) -> dict[str, int]:
        return {
            "requests in": self.requests,
            "answers out": self.answers,
            "dead-lettered": self.dead_lettered,
            "lost": len(self.lost),
            "double assignments": len(self.double_assignments),
            "duplicates delivered": sum(self.duplicates.values()),
            "inconsistent answers": len(self.inconsistent),
            "skipped offsets": sum(len(v) for v in self.skipped_offsets.values()),
            "reservation mismatches": len(self.reservation_mismatches),
            "session mismatches": len(self.session_mismatches),
        }

    def table(self) -> str:
        rows = self.figures()
        width = max(len(name) for name in rows)
        return "\n".join(f"{name:<{width}}  {value:>8}" for name, value in rows.items())

    def explain(self, limit: int = 10) -> str:
        """The figures, then the first few culprits of each kind: what a failing test prints."""
        lines = [self.table()]
        for title, items in (
            ("lost", self.lost),
            ("double assignments", self.double_assignments),
            ("inconsistent", list(self.inconsistent.items())),
            ("skipped offsets", list(self.skipped_offsets.items())),
            ("reservation mismatches", self.reservation_mismatches),
            ("session mismatches", self.session_mismatches),
        ):
            if items:
                lines.append(f"{title}: {items[:limit]}{' ...' if len(items) > limit else ''}")
        return "\n".join(lines)


def check(history: History) -> Report:
    report = Report(
        requests=len({r.order_id for r in history.requests}),
        answers=len(history.answers),
        dead_lettered=len(history.dead_letters),
    )
    by_order = _answers_by_order(history.answers)
    report.lost = _lost(history, by_order)
    report.duplicates, report.inconsistent = _duplicates_and_inconsistencies(by_order)
    report.double_assignments = _double_assignments(by_order, history.trip_ends)
    report.skipped_offsets = _skipped(history)
    open_orders = _open_orders(by_order, history.trip_ends)
    report.reservation_mismatches = _reservation_mismatches(history, by_order, open_orders)
    report.session_mismatches = _session_mismatches(history, open_orders)
    return report


# -- the checks -------------------------------------------------------------------------------------


def _answers_by_order(answers: Iterable[Answer]) -> dict[str, list[Answer]]:
    grouped: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        grouped[answer.order_id].append(answer)
    for group in grouped.values():
        group.sort(key=lambda a: (a.partition, a.offset))
    return dict(grouped)


def _lost(history: History, by_order: Mapping[str, list[Answer]]) -> list[str]:
    lettered_at = {(d.original_topic, d.original_partition, d.original_offset) for d in history.dead_letters}
    lettered_keys = {d.key for d in history.dead_letters if d.key is not None}
    # An order sent twice counts once, and is accounted for by an answer to any of its copies.
    lost = {
        r.order_id for r in history.requests
        if r.order_id not in by_order
        and (r.topic, r.partition, r.offset) not in lettered_at
        and r.order_id not in lettered_keys
    }
    return sorted(lost)


def _identity(answer: Answer) -> tuple[str, str | None]:
    return (answer.status, answer.driver_id)


def _duplicates_and_inconsistencies(
    by_order: Mapping[str, list[Answer]],
) -> tuple[dict[str, int], dict[str, list[str]]]:
    duplicates: dict[str, int] = {}
    inconsistent: dict[str, list[str]] = {}
    for order, answers in by_order.items():
        if len(answers) < 2:
            continue
        drivers = {a.driver_id for a in answers if a.status == "assigned"}
        first_assigned = next((i for i, a in enumerate(answers) if a.status == "assigned"), None)
        # Once an order is assigned every later answer must name the same driver; a failure before
        # the first assignment is allowed (a failed decision expires and a retry may succeed).
        contradicted = first_assigned is not None and any(
            a.status != "assigned" for a in answers[first_assigned + 1 :]
        )
        if len(drivers) > 1 or contradicted:
            inconsistent[order] = [f"{a.status}:{a.driver_id or a.error}@{a.offset}" for a in answers]
            continue
        repeats = len(answers) - len({_identity(a) for a in answers})
        if repeats:
            duplicates[order] = repeats
    return duplicates, inconsistent


def _first_assignments(by_order: Mapping[str, list[Answer]]) -> dict[str, Answer]:
    firsts: dict[str, Answer] = {}
    for order, answers in by_order.items():
        assigned = [a for a in answers if a.status == "assigned" and a.driver_id]
        if assigned:
            firsts[order] = assigned[0]
    return firsts


def _trip_end_by_order(trip_ends: Iterable[TripEnd]) -> dict[str, TripEnd]:
    ends: dict[str, TripEnd] = {}
    for end in sorted(trip_ends, key=lambda e: e.at_ms):
        ends.setdefault(end.order_id, end)
    return ends


def _open_orders(by_order: Mapping[str, list[Answer]], trip_ends: Iterable[TripEnd]) -> dict[str, str]:
    """order -> driver for every order assigned and not yet delivered or cancelled."""
    ends = _trip_end_by_order(trip_ends)
    return {order: a.driver_id for order, a in _first_assignments(by_order).items() if order not in ends}


def _double_assignments(by_order: Mapping[str, list[Answer]], trip_ends: Iterable[TripEnd]) -> list[Overlap]:
    """Two orders whose holds on one driver overlap in time: [assigned, freed) intervals."""
    ends = _trip_end_by_order(trip_ends)
    per_driver: dict[str, list[tuple[int, float, str]]] = defaultdict(list)
    for order, answer in _first_assignments(by_order).items():
        end = ends.get(order)
        freed = end.at_ms if end is not None and end.driver_id == answer.driver_id else float("inf")
        # The answer's time is the deciding worker's clock, the trip end's the trip service's. A trip
        # ends only after its answer was read, so a decision stamped later than its own trip's end
        # came from a clock running ahead: its hold began by the end at the latest.
        per_driver[answer.driver_id].append((min(answer.at_ms, freed), freed, order))
    overlaps: list[Overlap] = []
    for driver, holds in per_driver.items():
        holds.sort()
        for i, (_start, freed, order) in enumerate(holds):
            for later_start, _, later_order in holds[i + 1 :]:
                if later_start < freed:
                    overlaps.append(Overlap(driver, order, later_order))
    return overlaps


def _skipped(history: History) -> dict[TopicPartition, list[int]]:
    """Offsets the pipeline never consumed: gaps inside what it consumed, and input offsets it missed."""
    if history.consumed is None:
        return {}
    inputs: dict[TopicPartition, set[int]] = defaultdict(set)
    for request in history.requests:
        inputs[(request.topic, request.partition)].add(request.offset)
    skipped: dict[TopicPartition, list[int]] = {}
    for tp in set(history.consumed) | set(inputs):
        consumed = set(history.consumed.get(tp, ()))
        expected = set(inputs.get(tp, ()))
        if consumed:
            expected |= set(range(min(consumed), max(consumed) + 1))
        missing = sorted(expected - consumed)
        if missing:
            skipped[tp] = missing
    return skipped


def _reservation_mismatches(
    history: History, by_order: Mapping[str, list[Answer]], open_orders: Mapping[str, str]
) -> list[str]:
    problems: list[str] = []
    if history.reservations is not None:
        for driver, order in sorted(history.reservations.items()):
            if open_orders.get(order) != driver:
                problems.append(f"Redis holds {driver} for {order}, but no open answer on the topic says so")
        for order, driver in sorted(open_orders.items()):
            if history.reservations.get(driver) != order:
                problems.append(f"{order} assigned {driver} on the topic, but Redis does not hold {driver} for it")
    if history.decisions is not None:
        firsts = _first_assignments(by_order)
        for order, answer in sorted(firsts.items()):
            if history.decisions_since_ms is not None and answer.at_ms < history.decisions_since_ms:
                continue
            decided = history.decisions.get(order, "<none>")
            if decided != answer.driver_id:
                problems.append(f"{order} assigned {answer.driver_id} on the topic, Redis decided {decided}")
    return problems


def _session_mismatches(history: History, open_orders: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    if history.sessions is None:
        return problems
    holding = {driver: order for order, driver in open_orders.items()}
    for driver, order in sorted(holding.items()):
        session = history.sessions.get(driver)
        trip = session.get("trip_id") if session else None
        if trip != order:
            problems.append(f"{driver} holds {order} but its session shows trip_id {trip!r}")
    for driver, session in sorted(history.sessions.items()):
        if session.get("trip_id") and driver not in holding:
            problems.append(f"{driver}'s session shows trip_id {session['trip_id']!r} but holds no open order")
    for driver, (lat, lng) in sorted((history.last_pings or {}).items()):
        loc = (history.sessions.get(driver) or {}).get("last_loc") or {}
        if (loc.get("lat"), loc.get("lng")) != (lat, lng):
            problems.append(f"{driver}'s session is at {loc.get('lat')},{loc.get('lng')}, its last ping {lat},{lng}")
    return problems


# -- building histories from raw records ---------------------------------------------------------


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000) if moment is not None else 0


def request_from_record(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> Request:
    """The order of an input record: its orderId, or its key when the value does not decode."""
    try:
        order = default_codec().decode(AssignmentRequested, value).orderId
    except InvalidMessage:
        order = key.decode(errors="replace") if key else f"<unkeyed {topic}[{partition}]@{offset}>"
    return Request(order, topic, partition, offset)


def answer_from_record(partition: int, offset: int, value: bytes, timestamp_ms: int = 0) -> Answer:
    response = default_codec().decode(AssignmentResponse, value)
    at_ms = _ms(response.assignedAt or response.failedAt) or timestamp_ms
    return Answer(response.orderId, response.status, response.driverId, partition, offset, at_ms, response.error)


def dead_letter_from_record(key: bytes | None, headers: Iterable[tuple[str, bytes]]) -> DeadLetter:
    found = dl.header_dict(list(headers))
    return DeadLetter(
        key.decode(errors="replace") if key is not None else None,
        found[dl.ORIGINAL_TOPIC],
        int(found[dl.ORIGINAL_PARTITION]),
        int(found[dl.ORIGINAL_OFFSET]),
    )
