"""The reference downstream consumer: an order service's view of driver_assignment.responses.

Each order's state, the effects it caused (one notification per change) and the next offset of every
partition are written in one SQLite transaction; Kafka offsets are committed only after that. On restart
it resumes from the offsets in SQLite, so a record is applied exactly once however the process died, and
an answer sent twice (same orderId) changes nothing the second time."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.reading import start
from infra.clients import new_consumer
from infra.settings import Settings
from infra.topics import TopicNames
from producers.pacing import RateLimiter
from schemas.codec import InvalidMessage, default_codec
from schemas.models import AssignmentResponse, iso_utc

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,          -- assigned | failed
    driver_id  TEXT,
    eta_min    INTEGER,
    error      TEXT,
    answered_at TEXT,
    answers    INTEGER NOT NULL,       -- how many answers were read for it (repeats included)
    conflicts  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS notifications (  -- the side effect: one per change of an order's state
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    driver_id TEXT,
    source    TEXT NOT NULL           -- topic:partition:offset it came from
);
CREATE TABLE IF NOT EXISTS offsets (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


@dataclass(frozen=True)
class OrderState:
    order_id: str
    status: str
    driver_id: str | None = None
    eta_min: int | None = None
    error: str | None = None
    answered_at: str | None = None
    answers: int = 0
    conflicts: int = 0


@dataclass(frozen=True)
class Change:
    state: OrderState
    notification: str | None  # "driver_assigned" | "assignment_failed" | None when nothing new happened


def transition(current: OrderState | None, response: AssignmentResponse) -> Change:
    """Pure. An order gets one driver for good: a repeated answer changes nothing, an assignment after a
    failure (the order service retried) wins, and a different driver for an assigned order is a conflict
    that is counted and ignored (the contract says it never happens)."""
    moment = response.assignedAt or response.failedAt
    answered_at = iso_utc(moment) if moment else None
    answers = (current.answers if current else 0) + 1
    if response.status == "assigned":
        if current is None or current.status == "failed":
            return Change(OrderState(response.orderId, "assigned", response.driverId, response.eta, None, answered_at,
                                     answers, current.conflicts if current else 0), "driver_assigned")
        conflict = int(current.driver_id != response.driverId)
        return Change(_with(current, answers=answers, conflicts=current.conflicts + conflict), None)
    if current is None:
        return Change(OrderState(response.orderId, "failed", None, None, response.error, answered_at, answers),
                      "assignment_failed")
    return Change(_with(current, answers=answers), None)


def _with(state: OrderState, **changes: object) -> OrderState:
    return OrderState(**{**state.__dict__, **changes})


class OrderBook:
    """The SQLite file: orders, notifications and offsets, changed together or not at all."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: the transaction is on disk when COMMIT returns, before the Kafka offset is committed.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def next_offsets(self, topic: str) -> dict[int, int]:
        rows = self.db.execute("SELECT partition, next_offset FROM offsets WHERE topic = ?", (topic,))
        return dict(rows.fetchall())

    def get(self, order_id: str) -> OrderState | None:
        row = self.db.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
        return OrderState(*row) if row else None

    def orders(self) -> list[OrderState]:
        return [OrderState(*row) for row in self.db.execute("SELECT * FROM orders ORDER BY order_id")]

    def notification_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT order_id, COUNT(*) FROM notifications GROUP BY order_id")
        return dict(rows.fetchall())

    def apply(self, records: Iterable[tuple[ConsumerRecord, AssignmentResponse | None]]) -> dict[TopicPartition, int]:
        """Applies a batch in one transaction; skips what an earlier run already applied. Returns the next
        offset per partition, to commit to Kafka once this returns."""
        next_offsets: dict[TopicPartition, int] = {}
        self.db.execute("BEGIN IMMEDIATE")
        try:
            stored: dict[tuple[str, int], int] = {}
            for record, response in records:
                tp = (record.topic, record.partition)
                if tp not in stored:
                    stored[tp] = self.next_offsets(record.topic).get(record.partition, 0)
                if record.offset < stored[tp]:
                    continue  # applied before a crash, redelivered since
                if response is not None:
                    self._apply_one(record, response)
                stored[tp] = record.offset + 1
                next_offsets[TopicPartition(*tp)] = record.offset + 1
            for (topic, partition), offset in stored.items():
                self.db.execute(
                    "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT(topic, partition) DO UPDATE SET next_offset = ?",
                    (topic, partition, offset, offset),
                )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return next_offsets

    def _apply_one(self, record: ConsumerRecord, response: AssignmentResponse) -> None:
        change = transition(self.get(response.orderId), response)
        s = change.state
        self.db.execute(
            "INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (s.order_id, s.status, s.driver_id, s.eta_min, s.error, s.answered_at, s.answers, s.conflicts),
        )
        if change.notification:
            self.db.execute(
                "INSERT INTO notifications (order_id, kind, driver_id, source) VALUES (?, ?, ?, ?)",
                (s.order_id, change.notification, s.driver_id, f"{record.topic}:{record.partition}:{record.offset}"),
            )
        elif s.conflicts:
            log.warning("second_driver_ignored", order_id=s.order_id, kept=s.driver_id, offered=response.driverId)


class _ResumeFromBook(ConsumerRebalanceListener):
    """On every assignment, start each partition where the order book says, not where Kafka last committed."""

    def __init__(self, consumer, book: OrderBook, topic: str) -> None:
        self.consumer, self.book, self.topic = consumer, book, topic

    async def on_partitions_revoked(self, revoked) -> None:
        return None

    async def on_partitions_assigned(self, assigned) -> None:
        stored = self.book.next_offsets(self.topic)
        for tp in assigned:
            if tp.partition in stored:
                self.consumer.seek(tp, stored[tp.partition])


@dataclass
class FollowResult:
    applied: int = 0
    undecodable: int = 0


async def follow(
    settings: Settings,
    db_path: Path,
    group_id: str,
    idle_exit_s: float | None = None,
    max_per_s: float | None = None,
    batch_size: int = 100,
) -> FollowResult:
    """Consumes responses until stopped (or idle for idle_exit_s); state first, Kafka commit second."""
    topic = TopicNames(settings.topic_prefix).responses
    book = OrderBook(db_path)
    codec = default_codec(settings.schema_registry_url)
    limiter = RateLimiter(max_per_s, burst=batch_size)
    consumer = new_consumer(settings, group_id=group_id, max_poll_records=batch_size)
    consumer.subscribe([topic], listener=_ResumeFromBook(consumer, book, topic))
    await start(consumer, settings)
    result = FollowResult()
    last_record = time.monotonic()
    try:
        while idle_exit_s is None or time.monotonic() - last_record < idle_exit_s:
            batches = await consumer.getmany(timeout_ms=500, max_records=batch_size)
            records = [record for part in batches.values() for record in part]
            if not records:
                continue
            last_record = time.monotonic()
            await limiter.acquire(len(records))
            decoded = []
            for record in records:
                try:
                    decoded.append((record, codec.decode(AssignmentResponse, record.value)))
                except InvalidMessage as exc:
                    # A reference consumer logs and skips; it must not stop on one bad record.
                    result.undecodable += 1
                    log.error("undecodable_response", topic=record.topic, partition=record.partition,
                              offset=record.offset, error=str(exc))
                    decoded.append((record, None))
            committed = book.apply(decoded)
            result.applied += len(records)
            if committed:
                await consumer.commit(committed)
    except asyncio.CancelledError:
        pass
    finally:
        await consumer.stop()
        book.close()
    return result
