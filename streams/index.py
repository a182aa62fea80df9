"""The shared region index in Redis: session documents, H3 cell sets of available drivers, atomic
reservations and per-order decisions. Every worker reads and writes it; Lua keeps each step atomic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import h3
import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from infra.redis_keys import RedisKeys
from streams.logic.assignment import Decision
from streams.logic.geo import NEARBY_RESOLUTION, haversine_km, nearest_first
from streams.logic.sessions import DriverSession, last_location, unlocated_response
from streams.routing import key_partition

# Drivers per upsert.lua call: Redis serves no other client while a script runs, so an index rebuild
# goes in calls small enough that a reservation waits at most a few ms behind one.
UPSERT_BATCH = 100
# Drivers per move.lua call: a move is a fraction of an upsert's work.
MOVE_BATCH = 400
# The circle a candidate search starts from (candidates.lua): in a city of a few drivers per km2 it
# holds a request's handful of candidates already.
FIRST_CIRCLE_KM = 0.5


def lua(*names: str) -> str:
    """The scripts of these files of streams/lua/ joined, in order: a search after the functions it
    uses. Each file's header says its KEYS and ARGV."""
    folder = resources.files("streams") / "lua"
    return "\n".join((folder / f"{name}.lua").read_text() for name in names)


@dataclass(frozen=True)
class WriteResult:
    applied: int = 0
    stale: int = 0  # the index already had this version or a newer one
    fenced: int = 0  # refused: the driver's state was written by a newer owner (a higher fence token)
    held: tuple[str, ...] = ()  # drivers whose partition is not ready yet: to be written again later
    # Moves the index could not take (the driver unknown there, or written under an older token): to
    # be written again as whole sessions.
    unmovable: tuple[str, ...] = ()


@dataclass(frozen=True)
class Located:
    driver_id: str
    lat: float
    lng: float
    loc_ts_ms: int


@dataclass(frozen=True)
class Reservation:
    outcome: str  # reserved | existing | none
    decision: Decision | None
    # reserved: the reserved driver's position among the order's candidates (1 for the first);
    # none: how many candidates were tried (all of them)
    position: int


class RegionIndex:
    def __init__(self, client: aioredis.Redis, prefix: str, partitions: int) -> None:
        self.redis = client
        self.keys = RedisKeys(prefix)
        self.partitions = partitions
        self._upsert = client.register_script(lua("upsert"))
        self._move = client.register_script(lua("move"))
        self._reserve_first = client.register_script(lua("reserve_first"))
        self._record_failures = client.register_script(lua("record_failures"))
        self._forget_unexpiring = client.register_script(lua("forget_unexpiring"))
        self._nearby = client.register_script(lua("locate_available", "nearby"))
        self._candidates = client.register_script(lua("locate_available", "candidates"))

    @classmethod
    def from_url(cls, url: str, prefix: str, partitions: int) -> RegionIndex:
        return cls(aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=30), prefix, partitions)

    @property
    def cell_prefix(self) -> str:
        """Of the sets of available drivers per resolution-9 cell (the `nearby` API's)."""
        return self.keys.cells(NEARBY_RESOLUTION)

    # -- writes from the sessions agent ---------------------------------------------------------

    async def write_sessions(
        self, sessions: Iterable[DriverSession], fence: int, rebuild: bool = False,
        moves: Iterable[DriverSession] = (),
    ) -> WriteResult:
        """Applies session changes in one pipelined round trip, fenced by the writer's token: whole
        sessions UPSERT_BATCH drivers per upsert.lua call, and `moves` (sessions whose position alone
        changed since their last write) MOVE_BATCH per move.lua call."""
        sessions, moves = list(sessions), list(moves)
        flags = [fence, "1" if rebuild else "0"]
        calls = [
            (self._upsert, [*flags, *map(self._session_entry, sessions[start : start + UPSERT_BATCH])])
            for start in range(0, len(sessions), UPSERT_BATCH)
        ]
        calls += [
            (self._move, [fence, orjson.dumps([self._move_entry(s) for s in moves[start : start + MOVE_BATCH]])])
            for start in range(0, len(moves), MOVE_BATCH)
        ]
        if not calls:
            return WriteResult()
        try:
            results = await self._write_batches(calls)
        except NoScriptError:
            # Redis restarted or was replaced and forgot the scripts: load them and send again.
            for script in (self._upsert, self._move):
                await self.redis.script_load(script.script)
            results = await self._write_batches(calls)
        drivers = [s.driver_id for s in sessions] + [s.driver_id for s in moves]
        outcomes = list(zip(drivers, results, strict=True))
        return WriteResult(applied=results.count(1), stale=results.count(0), fenced=results.count(-1),
                           held=tuple(d for d, result in outcomes if result == -2),
                           unmovable=tuple(d for d, result in outcomes if result == -3))

    async def _write_batches(self, calls: list[tuple[AsyncScript, list[object]]]) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        keys = self.keys
        for script, args in calls:
            if script is self._upsert:
                pipe.evalsha(script.sha, 0, keys.driver(""), keys.reservation(""), keys.available, self.cell_prefix,
                             *args)
            else:
                pipe.evalsha(script.sha, 0, keys.driver(""), keys.available, self.cell_prefix, *args)
        return [result for batch in await pipe.execute() for result in batch]

    def _session_entry(self, session: DriverSession) -> bytes:
        """One driver's arguments of upsert.lua, all strings (Lua would print numbers with 14 digits)."""
        return orjson.dumps([
            session.driver_id,
            self.keys.ready(key_partition(session.driver_id.encode(), self.partitions)),
            str(session.version),
            orjson.dumps(unlocated_response(session)).decode(),
            _text(session.lat),
            _text(session.lng),
            str(session.loc_ts_ms or 0),
            session.h3_res9 or "",
            "1" if session.assignable else "0",
            list(session.closed_trips),
            session.trip_id or "",
            _text(session.speed_mps),
            _text(session.heading_deg),
        ])

    def _move_entry(self, session: DriverSession) -> list[str]:
        """One driver's entry of move.lua."""
        return [
            session.driver_id,
            self.keys.ready(key_partition(session.driver_id.encode(), self.partitions)),
            str(session.version),
            _text(session.lat),
            _text(session.lng),
            str(session.loc_ts_ms or 0),
            session.h3_res9 or "",
            _text(session.speed_mps),
            _text(session.heading_deg),
        ]

    # -- the index's generation: lets every worker notice Redis was emptied or replaced ---------

    async def current_epoch(self) -> str:
        """The epoch of the index; creates one when Redis has none (emptied, or a new server)."""
        epoch = await self.redis.get(self.keys.epoch)
        if epoch is None:
            await self.redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
            epoch = await self.redis.get(self.keys.epoch)
        return epoch

    async def unready(self, partitions: Iterable[int]) -> list[int]:
        """Of these partitions, those not rebuilt since Redis was last emptied."""
        wanted = sorted(partitions)
        if not wanted:
            return []
        flags = await self.redis.mget([self.keys.ready(p) for p in wanted])
        return [p for p, flag in zip(wanted, flags, strict=True) if flag is None]

    async def mark_ready(self, partitions: Iterable[int], epoch: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for partition in partitions:
            pipe.set(self.keys.ready(partition), epoch)
        await pipe.execute()

    async def request_rebuild(self) -> str:
        """Starts a new epoch: every worker rebuilds its part of the index on its next check."""
        epoch = uuid.uuid4().hex
        await self.redis.set(self.keys.epoch, epoch)
        return epoch

    # -- reads ------------------------------------------------------------------------------------

    async def session_response(self, driver_id: str) -> dict | None:
        """The driver's DriverSessionResponse: its document, and `last_loc` from the position fields."""
        doc, lat, lng, ts, c9, speed, heading = await self.redis.hmget(
            self.keys.driver(driver_id), "doc", "lat", "lng", "ts", "c9", "spd", "hdg"
        )
        if doc is None:
            return None
        response = orjson.loads(doc)
        if "last_loc" not in response:  # documents written by 0.1.0 carry their position
            response["last_loc"] = last_location(_number(lat), _number(lng), c9 or None, _number(speed),
                                                 _number(heading), int(ts) if ts and ts != "0" else None)
        return response

    async def nearby(self, origin: str, k: int, limit: int, min_loc_ts_ms: int) -> tuple[list[str], list[str]]:
        """Available drivers in the k-ring of a resolution-9 cell, nearest to its centre first."""
        cells = list(h3.grid_disk(origin, k))
        located = _located(await self._nearby(keys=[self.cell_prefix + c for c in cells],
                                              args=[self.keys.driver(""), min_loc_ts_ms]))
        lat, lng = h3.cell_to_latlng(origin)
        ordered = nearest_first({d.driver_id: (d.lat, d.lng) for d in located}, lat, lng)
        return ordered[:limit], cells

    async def candidates(
        self, searches: Sequence[tuple[float, float, float]], count: int, min_loc_ts_ms: int
    ) -> list[tuple[list[tuple[Located, float]], bool]]:
        """For each (lat, lng, radius_km) search: up to `count` available, fresh drivers within radius_km
        of the point, nearest first, with their distance; and whether the search found `count` (more may
        lie beyond). Each search reads only the drivers near its point (in circles growing up to its
        radius until one holds `count`), never the fleet; one round trip for all."""
        if not searches:
            return []
        args: list = [self.keys.driver(""), min_loc_ts_ms, count, FIRST_CIRCLE_KM]
        for lat, lng, radius_km in searches:
            # Redis measures on a slightly different sphere: search a hair wider, then judge by ours,
            # so that a driver exactly radius_km away qualifies.
            args += [lng, lat, radius_km * 1.001 + 0.001]
        replies = await self._candidates(keys=[self.keys.available], args=args)
        results = []
        for (lat, lng, radius_km), (searched, located) in zip(searches, replies, strict=True):
            found = [(d, haversine_km(lat, lng, d.lat, d.lng)) for d in _located(located)]
            within = sorted(((d, km) for d, km in found if km <= radius_km + 1e-9), key=lambda pair: pair[1])
            results.append((within, searched >= count))
        return results

    # -- reservations and decisions -----------------------------------------------------------

    async def reserve_first(
        self, offers: Sequence[tuple[Decision, Sequence[tuple[str, int]]]], min_loc_ts_ms: int, retention_s: int
    ) -> list[Reservation]:
        """For each (decision, candidates) in order, with candidates (driver id, ETA in minutes) best
        first: reserves the first candidate still free, and records the order's decision, naming that
        driver and ETA, for `retention_s`, unless the order already has one, which is returned instead.
        One round trip for all."""
        if not offers:
            return []
        args: list = [self.keys.driver(""), self.keys.reservation(""), self.keys.decision(""), self.keys.available,
                      self.cell_prefix, min_loc_ts_ms, retention_s]
        for decision, candidates in offers:
            args += [decision.order_id, orjson.dumps(decision.record()), len(candidates)]
            for driver_id, eta in candidates:
                args += [driver_id, eta]
        replies = await self._reserve_first(args=args)
        return [
            Reservation(outcome, Decision.from_record(orjson.loads(payload)) if outcome != "none" else None,
                        int(position))
            for outcome, position, payload in replies
        ]

    async def decision(self, order_id: str) -> Decision | None:
        raw = await self.redis.get(self.keys.decision(order_id))
        return Decision.from_record(orjson.loads(raw)) if raw else None

    async def record_failures(self, failures: Sequence[Decision], ttl_s: int) -> list[Decision]:
        """Records each failed decision for `ttl_s` unless its order already has one; returns each
        order's decision, the existing one or the failure. One round trip for all."""
        if not failures:
            return []
        replies = await self._record_failures(keys=[self.keys.decision(f.order_id) for f in failures],
                                              args=[ttl_s, *(orjson.dumps(f.record()) for f in failures)])
        return [Decision.from_record(orjson.loads(raw)) for raw in replies]

    async def forget_unexpiring_decisions(self, order_ids: Sequence[str]) -> int:
        """Deletes the decisions of these orders that Redis would keep forever (see forget_unexpiring.lua)."""
        if not order_ids:
            return 0
        return int(await self._forget_unexpiring(keys=[self.keys.decision(o) for o in order_ids]))

    async def reservation_holder(self, driver_id: str) -> str | None:
        return await self.redis.get(self.keys.reservation(driver_id))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())


def _located(payload: str) -> list[Located]:
    """The (id, lat, lng, ts) quadruples of locate_available.lua."""
    flat = orjson.loads(payload)
    return [
        Located(flat[i], float(flat[i + 1]), float(flat[i + 2]), int(flat[i + 3])) for i in range(0, len(flat), 4)
    ]


def _text(value: float | None) -> str:
    """A number as the index stores it: repr keeps every digit of a float; "" is none."""
    return "" if value is None else repr(value)


def _number(text: str | None) -> float | None:
    return float(text) if text else None


def now_ms() -> int:
    return int(time.time() * 1000)
