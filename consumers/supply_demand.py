"""Reading `dispatch.supply_demand`: the latest share per key (a tombstone removes one), the shares of each
cell added up, what a replay of the run's own topics says they should be, and the file the demo's map
draws. The HTTP view (streams.answers), `geodispatch supply-demand` and the integration test use it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h3
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.reading import partitions_of, read_to_end, start
from infra.clients import new_consumer
from infra.settings import Settings
from infra.topics import TopicNames, key_partition
from schemas.codec import Codec, InvalidMessage, default_codec
from schemas.models import (
    ASSIGNED,
    DEMAND,
    SUPPLY,
    AssignmentRequested,
    AssignmentResponse,
    DriverStatus,
    LocationPing,
    PresenceChanged,
    SupplyDemand,
    TripEvent,
    demand_outcome,
    parse_feed_key,
)

log = structlog.get_logger(__name__)
# The resolution of a driver's session cell (streams.logic.geo.NEARBY_RESOLUTION): its feed cell is
# that cell's parent, as the worker counts it.
SESSION_RESOLUTION = 9


# -- cells -----------------------------------------------------------------------------------------


def driver_cell(lat: float, lng: float, resolution: int) -> str:
    """The feed cell of a driver (or a restaurant) at (lat, lng): the parent of its resolution-9 session
    cell. Not the cell of resolution `resolution` around the point: H3's children do not tile their
    parent exactly, and the two differ near a cell's edge (a restaurant and a driver at the same spot
    would be counted in neighbouring cells)."""
    cell9 = h3.latlng_to_cell(lat, lng, SESSION_RESOLUTION)
    return cell9 if resolution >= SESSION_RESOLUTION else h3.cell_to_parent(cell9, resolution)


def restaurant_cell(request: Mapping[str, Any], resolution: int) -> str | None:
    """The feed cell of a request (its restaurant's, as `driver_cell`), None when the restaurant's coordinates are not
    numbers in range: such a request counts nowhere."""
    lat, lng = request.get("restaurantLatitude"), request.get("restaurantLongitude")
    for value, bound in ((lat, 90.0), (lng, 180.0)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or abs(value) > bound:
            return None
    return driver_cell(float(lat), float(lng), resolution)


# -- the feed's latest shares, added up ------------------------------------------------------------


@dataclass
class Totals:
    available_drivers: int = 0
    requests: int = 0
    assigned: int = 0
    refused: int = 0

    def add(self, share: SupplyDemand | Totals) -> None:
        self.available_drivers += share.available_drivers
        self.requests += share.requests
        self.assigned += share.assigned
        self.refused += share.refused


@dataclass
class Shares:
    """The feed as last written: the latest share per key, and the records that could not be read."""

    latest: dict[str, SupplyDemand] = field(default_factory=dict)
    invalid: int = 0

    def apply(self, key: bytes | None, value: bytes | None, codec: Codec) -> None:
        """One record of the topic, in offset order: a value replaces its key's share, a tombstone
        removes it. A record that cannot be read is logged and counted, and leaves the share as it was."""
        try:
            text = (key or b"").decode()
            parse_feed_key(text)
            if value is None:
                self.latest.pop(text, None)
                return
            share = codec.decode(SupplyDemand, value)
            if share.key != text:
                raise InvalidMessage(f"the record's key {text!r} is not its share's {share.key!r}", "key")
        except (UnicodeDecodeError, ValueError) as exc:  # InvalidMessage is a ValueError
            self.invalid += 1
            log.error("supply_demand_record_invalid", key=repr(key)[:80], error=str(exc))
            return
        self.latest[text] = share

    @property
    def resolution(self) -> int | None:
        return next((share.resolution for share in self.latest.values()), None)


def add_up(shares: Iterable[SupplyDemand], cells: Iterable[str] | None = None) -> dict[str, Totals]:
    """Each cell's shares added up (all cells, or those of `cells`, each present even with nothing)."""
    wanted = None if cells is None else set(cells)
    totals: dict[str, Totals] = {cell: Totals() for cell in wanted or ()}
    for share in shares:
        if wanted is None or share.h3 in wanted:
            totals.setdefault(share.h3, Totals()).add(share)
    return totals


def grand_total(per_cell: Mapping[str, Totals]) -> Totals:
    total = Totals()
    for totals in per_cell.values():
        total.add(totals)
    return total


def counts_by_share(shares: Iterable[SupplyDemand]) -> dict[tuple[str, str, int], dict[str, int]]:
    """(cell, kind, partition) -> the share's non-zero counts: what `replay` gives, to compare."""
    found = {}
    for share in shares:
        counts = {name: getattr(share, name) for name in ("available_drivers", "requests", "assigned", "refused")}
        found[(share.h3, share.kind, share.partition)] = {name: n for name, n in counts.items() if n}
    return found


async def read_feed(settings: Settings, codec: Codec | None = None) -> Shares:
    """The feed from its beginning to its end as of the call, folded to the latest share per key."""
    codec = codec or default_codec()
    shares = Shares()
    async for record in read_to_end(settings, TopicNames(settings.topic_prefix).supply_demand):
        shares.apply(record.key, record.value, codec)
    return shares


class FeedFollower:
    """The feed kept current in memory for the HTTP view: one consumer of no group, from the topic's
    beginning, started by the first question (a process nobody asks reads nothing). An answer waits
    until the follower has read up to the end the topic had when it started."""

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self._settings = settings
        self._codec = codec or default_codec()
        self.shares = Shares()
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self.failure: str | None = None

    async def current(self, timeout_s: float = 5.0) -> Shares:
        """The shares as last read; raises when the topic cannot be read (the next call tries again)."""
        if self._task is None or self._task.done():
            self._caught_up.clear()
            self._task = asyncio.create_task(self._follow(), name="supply_demand_follower")
        if not self._caught_up.is_set():
            caught_up = asyncio.ensure_future(self._caught_up.wait())
            await asyncio.wait([caught_up, self._task], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            caught_up.cancel()
            if not self._caught_up.is_set():
                if self._task.done() and not self._task.cancelled():
                    raise self._task.exception() or LookupError("the follower stopped")
                raise TimeoutError(f"the feed was not read to its end within {timeout_s} s")
        return self.shares

    async def _follow(self) -> None:
        settings, topic = self._settings, TopicNames(self._settings.topic_prefix).supply_demand
        consumer = self._consumer = new_consumer(settings)
        try:
            await start(consumer, settings)
            partitions = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
            if not partitions:
                raise LookupError(f"topic {topic} does not exist (`geodispatch topics apply`)")
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            self.shares, self.failure = Shares(), None
            while True:
                batch = await consumer.getmany(*partitions, timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self.shares.apply(record.key, record.value, self._codec)
                if not self._caught_up.is_set():
                    positions = [await consumer.position(tp) for tp in partitions]
                    if all(position >= ends[tp] for position, tp in zip(positions, partitions, strict=True)):
                        self._caught_up.set()
        except Exception as exc:
            # The next question starts it again; this one is answered with the failure.
            self.failure = f"{type(exc).__name__}: {exc}"
            log.error("supply_demand_follow_failed", error=self.failure)
            raise
        finally:
            await consumer.stop()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# -- what the feed should say, from a replay of the run's own topics -------------------------------


@dataclass
class DriverReplay:
    online: bool = False
    eligibility: str = "ACTIVE"
    status_ts: float = float("-inf")
    ping_ts: float | None = None
    lat: float | None = None
    lng: float | None = None
    trips: set[str] = field(default_factory=set)


@dataclass
class Replay:
    """The worker's counts worked out again from its inputs and outputs, record by record in each
    topic's order: presence changes (the pipeline's own account of online and offline), statuses
    (eligibility), pings (position, with the worker's rules: a ping not newer than the last one
    accepted, or closer to it than the minimum interval, is dropped), answers (the assigned driver's
    trip; each answer's demand, at its request's restaurant) and trip events (their end)."""

    resolution: int
    partitions: int
    min_ping_interval_ms: int
    drivers: dict[str, DriverReplay] = field(default_factory=dict)
    restaurants: dict[str, str | None] = field(default_factory=dict)  # orderId -> cell
    answers: list[tuple[str, str, float]] = field(default_factory=list)  # (orderId, outcome, timestamp ms)
    closed: set[str] = field(default_factory=set)
    codec: Codec = field(default_factory=default_codec)
    unreadable: int = 0

    def _driver(self, driver_id: str) -> DriverReplay:
        return self.drivers.setdefault(driver_id, DriverReplay())

    def feed(self, kind: str, value: bytes | None, timestamp_ms: float) -> None:
        try:
            self._feed(kind, value, timestamp_ms)
        except ValueError:  # dead-lettered by the worker too: nothing of it counts
            self.unreadable += 1

    def _feed(self, kind: str, value: bytes | None, timestamp_ms: float) -> None:
        codec = self.codec
        if kind == "presence":
            presence = codec.decode(PresenceChanged, value)
            self._driver(presence.driver_id).online = presence.online
        elif kind == "status":
            status = codec.decode(DriverStatus, value)
            driver, ts = self._driver(status.driver_id), status.ts.timestamp() * 1000
            if ts >= driver.status_ts:
                driver.status_ts = ts
                driver.eligibility = status.eligibility or driver.eligibility
        elif kind == "ping":
            ping = codec.decode(LocationPing, value)
            driver, ts = self._driver(ping.driver_id), ping.ts.timestamp() * 1000
            if driver.ping_ts is None or (ts > driver.ping_ts and ts - driver.ping_ts >= self.min_ping_interval_ms):
                driver.ping_ts, driver.lat, driver.lng = ts, ping.lat, ping.lng
        elif kind == "request":
            raw = codec.decode_raw(AssignmentRequested, value)
            if isinstance(raw.get("orderId"), str):
                self.restaurants[raw["orderId"]] = restaurant_cell(raw, self.resolution)
        elif kind == "response":
            answer = codec.decode(AssignmentResponse, value)
            outcome = demand_outcome(answer.status, answer.error)
            if outcome == ASSIGNED and answer.driverId:
                self._driver(answer.driverId).trips.add(answer.orderId)
            self.answers.append((answer.orderId, outcome, timestamp_ms))
        elif kind == "trip":
            trip = codec.decode(TripEvent, value)
            if trip.status in ("delivered", "cancelled"):
                self.closed.add(trip.orderId)

    def counts(self, since_ms: float = float("-inf")) -> dict[tuple[str, str, int], dict[str, int]]:
        """(cell, kind, partition) -> non-zero counts: drivers available now; answers given since
        `since_ms` (the window's start), each at its request's restaurant, in its order's partition."""
        found: dict[tuple[str, str, int], dict[str, int]] = {}
        for driver_id, driver in self.drivers.items():
            available = driver.online and driver.eligibility == "ACTIVE" and not (driver.trips - self.closed)
            if available and driver.lat is not None and driver.lng is not None:
                key = (driver_cell(driver.lat, driver.lng, self.resolution), SUPPLY,
                       key_partition(driver_id.encode(), self.partitions))
                counts = found.setdefault(key, {})
                counts["available_drivers"] = counts.get("available_drivers", 0) + 1
        for order_id, outcome, at_ms in self.answers:
            cell = self.restaurants.get(order_id)
            if cell is None or at_ms < since_ms:
                continue
            counts = found.setdefault((cell, DEMAND, key_partition(order_id.encode(), self.partitions)), {})
            counts["requests"] = counts.get("requests", 0) + 1
            if outcome != "other":
                counts[outcome] = counts.get(outcome, 0) + 1
        return found


async def replay(settings: Settings, since_ms: float = float("-inf")) -> Replay:
    """Reads the run's own topics from their beginning to their end as of the call and replays them."""
    names = TopicNames(settings.topic_prefix)
    done = Replay(settings.supply_demand_resolution, settings.partitions,
                  int(settings.min_ping_interval_s * 1000))
    topics = [("status", names.status), ("presence", names.presence), ("trip", names.trip_events)]
    topics += [("ping", names.locations(region)) for region in settings.regions]
    # Requests before answers: an answer is counted at its request's restaurant.
    topics += [("request", names.requests(region)) for region in settings.regions]
    topics += [("response", names.responses)]
    for kind, topic in topics:
        async for record in read_to_end(settings, topic):
            done.feed(kind, record.value, record.timestamp)
    return done


def differences(feed: Mapping[tuple[str, str, int], Mapping[str, int]],
                expected: Mapping[tuple[str, str, int], Mapping[str, int]]) -> list[str]:
    """Each share whose counts differ, in words; empty when the feed and the replay agree."""
    return [f"{cell}/{kind}/{partition}: feed {dict(feed.get(k, {}))}, replay {dict(expected.get(k, {}))}"
            for k in sorted(set(feed) | set(expected)) if dict(feed.get(k, {})) != dict(expected.get(k, {}))
            for cell, kind, partition in [k]]


# -- the demo's map --------------------------------------------------------------------------------


async def write_supply_demand(settings: Settings, path: Path) -> Path:
    """Writes the feed's cells, each with its shares added up, to `path` (JSON: resolution, window,
    cells [{h3, available_drivers, requests, assigned, refused}], totals, invalid records), for the
    demo's map layer (producers.plots.draw_supply_demand). Returns the path."""
    shares = await read_feed(settings)
    per_cell = add_up(shares.latest.values())
    document = {
        "topic": TopicNames(settings.topic_prefix).supply_demand,
        "resolution": shares.resolution or settings.supply_demand_resolution,
        "window_s": settings.supply_demand_window_s,
        "cells": [{"h3": cell, **asdict(totals)} for cell, totals in sorted(per_cell.items())],
        "totals": asdict(grand_total(per_cell)),
        "invalid_records": shares.invalid,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return path
