"""The shared region index in Redis: session documents, the available drivers of each shard cell,
reservations and per-order decisions. Every worker reads and writes it; Lua keeps each step atomic, and
each step touches one Redis Cluster hash slot (infra.redis_keys)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import h3
import orjson
import structlog
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import NoScriptError

from infra.clients import redis_client
from infra.redis_keys import RedisKeys
from infra.settings import Settings
from streams.logic.assignment import Decision
from streams.logic.geo import haversine_km, nearest_first
from streams.logic.sessions import DriverSession, last_location, unlocated_response
from streams.logic.shards import reach_km, shard_of, shards_of_cells, shards_within

# Drivers per upsert.lua call: Redis serves no other client while a script runs, so an index rebuild
# goes in calls small enough that a reservation waits at most a few ms behind one.
UPSERT_BATCH = 100
# Drivers per move.lua call: a move is a fraction of an upsert's work.
MOVE_BATCH = 400
# A script call: the script's name (SCRIPTS), its KEYS, its ARGV.
Call = tuple[str, Sequence[str], Sequence[object]]
# Keys per UNLINK of `forget_old_layout`.
OLD_LAYOUT_BATCH = 5000
log = structlog.get_logger(__name__)
# The circle a candidate search starts from (candidates.lua): in a city of a few drivers per km2 it
# holds a request's handful of candidates already.
FIRST_CIRCLE_KM = 0.5


SCRIPTS = ("upsert", "move", "hints", "candidates", "nearby", "reserve", "record_decisions", "settle", "decide",
           "forget_unexpiring")
# How long a reservation lasts until its order's decision is recorded and it is settled: long enough to
# outlast a worker's Redis retries and the redelivery of its requests to another worker after it stopped
# between the two (docs/RELIABILITY.md); a driver reserved by a worker that stopped before it recorded
# the decision is free again after it.
PROVISIONAL_S = 300


def lua(name: str) -> str:
    """The script of this file of streams/lua/ (its header says its KEYS and ARGV), after the steps the
    scripts share (common.lua)."""
    folder = resources.files("streams") / "lua"
    return (folder / "common.lua").read_text() + (folder / f"{name}.lua").read_text()


@dataclass(frozen=True)
class WriteResult:
    applied: int = 0
    stale: int = 0  # the index already had this version or a newer one
    fenced: int = 0  # refused: the driver's state was written by a newer owner (a higher fence token)
    held: tuple[str, ...] = ()  # drivers whose partition is not ready yet: to be written again later
    # Moves the index could not take (the driver unknown there, or written under an older token): to
    # be written again as whole sessions.
    unmovable: tuple[str, ...] = ()


class Located(NamedTuple):
    """An available driver a search found. A tuple: a batch's searches make thousands, and a frozen
    dataclass costs several times as much to build."""

    driver_id: str
    lat: float
    lng: float
    loc_ts_ms: int
    shard: str  # the shard cell whose hints it was found in


# An order to assign and its candidates, best first: (order id, [(driver id, ETA in minutes)]).
Offer = tuple[str, Sequence[tuple[str, int]]]


@dataclass(frozen=True)
class Reservation:
    outcome: str  # reserved | existing | none
    decision: Decision | None
    # reserved: the reserved driver's position among the order's candidates (1 for the first);
    # none: how many candidates were tried (all of them)
    position: int


class RegionIndex:
    """The index on one Redis or a Redis Cluster alike: every script call touches one hash slot
    (infra.redis_keys), and the calls of a batch go in one pipeline, which a cluster client splits by
    node."""

    def __init__(self, client: Redis | RedisCluster, prefix: str, partitions: int, shard_resolution: int,
                 wait_replicas: int = 0, wait_timeout_ms: int = 100,
                 on_unreplicated: Callable[[], None] = lambda: None) -> None:
        self.redis = client
        # Replicas that must have a reservation or decision before it counts (Settings.redis_wait_replicas).
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        # Called for each pipeline whose writes went out with fewer replicas than that.
        self._on_unreplicated = on_unreplicated
        self._node_clients: dict[str, Redis] = {}
        self.keys = RedisKeys(prefix, partitions)
        # One Redis takes steps across slots in one call: a batch's reservations and decisions
        # (decide.lua), a search over several shard cells; a cluster takes them slot by slot.
        self.single_node = not isinstance(client, RedisCluster)
        self.shard_resolution = shard_resolution
        self._scripts = {name: client.register_script(lua(name)) for name in SCRIPTS}

    @classmethod
    def from_settings(cls, settings: Settings, on_unreplicated: Callable[[], None] = lambda: None) -> RegionIndex:
        return cls(redis_client(settings), settings.redis_prefix, settings.partitions, settings.redis_shard_resolution,
                   settings.redis_wait_replicas, settings.redis_wait_timeout_ms, on_unreplicated)

    def _driver_keys(self, driver_ids: Iterable[str]) -> list[str]:
        """Each driver's hash and reservation key, in turn: the KEYS of the driver scripts."""
        keys: list[str] = []
        for driver_id in driver_ids:
            keys += [self.keys.driver(driver_id), self.keys.reservation(driver_id)]
        return keys

    def _by_node(self, shards_of: Sequence[Sequence[str]]) -> list[tuple[list[str], list[int]]]:
        """The searches (each reading the shard cells shards_of[i]) grouped into calls, each with the
        shards it reads: one call for all on one Redis, one per shard on a cluster."""
        if self.single_node:
            return [(sorted({shard for shards in shards_of for shard in shards}), list(range(len(shards_of))))]
        by_shard: dict[str, list[int]] = {}
        for i, shards in enumerate(shards_of):
            for shard in shards:
                by_shard.setdefault(shard, []).append(i)
        return [([shard], indices) for shard, indices in by_shard.items()]

    def _shard_keys(self, shards: Iterable[str]) -> list[str]:
        """Each shard's GEO set and fixes hash, in turn: the KEYS of the search scripts."""
        return [key for shard in shards for key in (self.keys.available(shard), self.keys.fixes(shard))]

    async def _run(self, calls: Sequence[Call], replicated: bool = False) -> list:
        """Runs (script, keys, args) calls in one pipeline; their replies in order. `replicated`: the
        calls' writes count only once `wait_replicas` replicas have them (see `_pipelines_per_node`)."""
        if not calls:
            return []
        run = self._pipelines_per_node if replicated and self.wait_replicas else self._pipeline
        try:
            return await run(calls)
        except NoScriptError:
            # Redis restarted, failed over or was replaced and forgot the scripts: load them, send again.
            for script in self._scripts.values():
                await self.redis.script_load(script.script)
            return await run(calls)

    async def _pipeline(self, calls: Sequence[Call]) -> list:
        if len(calls) == 1:  # a pipeline's own bookkeeping costs more than the call
            name, keys, args = calls[0]
            return [await self.redis.evalsha(self._scripts[name].sha, len(keys), *keys, *args)]
        pipe = self.redis.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
        return await pipe.execute()

    async def _pipelines_per_node(self, calls: Sequence[Call]) -> list:
        """The calls in one pipeline per Redis node, each ending with WAIT: Redis replicates
        asynchronously, and a reservation or decision acknowledged by a primary that dies before its
        replica has it would be lost in the failover, its driver free again on the new primary
        (docs/RELIABILITY.md). WAIT counts the writes of its own connection, so it goes down the
        pipeline's. A node whose replicas do not confirm within `wait_timeout_ms` is logged and counted,
        and the answer still goes out: the index is not stopped by a replica that is down."""
        by_node: dict[str, tuple[Redis, list[int]]] = {}
        for i, (_, keys, _) in enumerate(calls):
            if isinstance(self.redis, RedisCluster):
                node = self.redis.get_node_from_key(keys[0])
                by_node.setdefault(node.name, (self._node_client(node), []))[1].append(i)
            else:
                by_node.setdefault("", (self.redis, []))[1].append(i)

        async def run(client: Redis, indices: list[int]) -> list:
            pipe = client.pipeline(transaction=False)
            for i in indices:
                name, keys, args = calls[i]
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            *replies, replicas = await pipe.execute()
            if int(replicas) < self.wait_replicas:
                self._on_unreplicated()
                log.warning("redis_writes_not_replicated", replicas=int(replicas), wanted=self.wait_replicas,
                            node=getattr(client.connection_pool, "connection_kwargs", {}).get("port"))
            return replies

        replies: list = [None] * len(calls)
        done = await asyncio.gather(*(run(client, indices) for client, indices in by_node.values()))
        for (_, indices), answers in zip(by_node.values(), done, strict=True):
            for i, answer in zip(indices, answers, strict=True):
                replies[i] = answer
        return replies

    def _node_client(self, node: ClusterNode) -> Redis:
        """A client of one node of the cluster alone, for the pipelines that end with WAIT; reconnected
        when the node's address changes (a failover)."""
        client = self._node_clients.get(node.name)
        if client is None:
            kwargs = node.connection_kwargs
            client = Redis(host=node.host, port=node.port, username=kwargs.get("username"),
                           password=kwargs.get("password"), decode_responses=kwargs.get("decode_responses", True),
                           socket_timeout=kwargs.get("socket_timeout"), health_check_interval=30)
            self._node_clients[node.name] = client
        return client

    async def aclose(self) -> None:
        for client in self._node_clients.values():
            await client.aclose()
        await self.redis.aclose()

    # -- writes from the sessions agent ---------------------------------------------------------

    async def write_sessions(
        self, sessions: Iterable[DriverSession], fence: int, rebuild: bool = False,
        moves: Iterable[DriverSession] = (),
    ) -> WriteResult:
        """Applies session changes, fenced by the writer's token, in two pipelined round trips: first
        the drivers' own keys, per partition, whole sessions UPSERT_BATCH drivers per upsert.lua call
        and `moves` (sessions whose position alone changed since their last write) MOVE_BATCH per
        move.lua call; then the hints those changes call for, per shard cell."""
        flags = [fence, "1" if rebuild else "0"]
        calls: list[tuple[str, list[str], list[object]]] = []
        order: list[str] = []
        for partition, batch in self._by_partition(sessions).items():
            for start in range(0, len(batch), UPSERT_BATCH):
                chunk = batch[start : start + UPSERT_BATCH]
                calls.append(("upsert", [self.keys.ready(partition), *self._driver_keys(s.driver_id for s in chunk)],
                              [*flags, *map(self._session_entry, chunk)]))
                order += [s.driver_id for s in chunk]
        for partition, batch in self._by_partition(moves).items():
            for start in range(0, len(batch), MOVE_BATCH):
                chunk = batch[start : start + MOVE_BATCH]
                calls.append(("move", [self.keys.ready(partition), *self._driver_keys(s.driver_id for s in chunk)],
                              [fence, orjson.dumps([self._move_entry(s) for s in chunk])]))
                order += [s.driver_id for s in chunk]
        if not calls:
            return WriteResult()
        replies = await self._run(calls)
        await self.apply_hints(hints for _, hints in replies)
        results = [result for outcome, _ in replies for result in outcome]
        outcomes = list(zip(order, results, strict=True))
        return WriteResult(applied=results.count(1), stale=results.count(0), fenced=results.count(-1),
                           held=tuple(d for d, result in outcomes if result == -2),
                           unmovable=tuple(d for d, result in outcomes if result == -3))

    def _by_partition(self, sessions: Iterable[DriverSession]) -> dict[int, list[DriverSession]]:
        grouped: dict[int, list[DriverSession]] = {}
        for session in sessions:
            grouped.setdefault(self.keys.partition(session.driver_id), []).append(session)
        return grouped

    async def apply_hints(self, replies: Iterable[str]) -> None:
        """Applies the hints' changes that driver scripts returned (JSON arrays of [shard, id, ...]),
        one hints.lua call per shard cell, in the order they were returned."""
        by_shard: dict[str, list[list]] = {}
        for reply in replies:
            for change in orjson.loads(reply):
                by_shard.setdefault(change[0], []).append(change[1:])
        await self._run([("hints", [self.keys.available(shard), self.keys.fixes(shard)], [orjson.dumps(changes)])
                         for shard, changes in by_shard.items()])

    def _session_entry(self, session: DriverSession) -> bytes:
        """One driver's arguments of upsert.lua, all strings (Lua would print numbers with 14 digits)."""
        return orjson.dumps([
            session.driver_id,
            str(session.version),
            orjson.dumps(unlocated_response(session)).decode(),
            _text(session.lat),
            _text(session.lng),
            str(session.loc_ts_ms or 0),
            session.h3_res9 or "",
            self._shard(session),
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
            str(session.version),
            _text(session.lat),
            _text(session.lng),
            str(session.loc_ts_ms or 0),
            session.h3_res9 or "",
            self._shard(session),
            _text(session.speed_mps),
            _text(session.heading_deg),
        ]

    def _shard(self, session: DriverSession) -> str:
        return shard_of(session.h3_res9, self.shard_resolution) if session.h3_res9 else ""

    # -- the index's generation: lets every worker notice Redis was emptied or replaced ---------

    async def current_epoch(self) -> str:
        """The epoch of the index; creates one when Redis has none (emptied, or a new server)."""
        epoch = await self.redis.get(self.keys.epoch)
        if epoch is None:
            await self.redis.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
            epoch = await self.redis.get(self.keys.epoch)
        return epoch

    async def unready(self, partitions: Iterable[int]) -> list[int]:
        """Of these partitions, those not rebuilt since Redis (or their slot) was last emptied."""
        wanted = sorted(partitions)
        if not wanted:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for partition in wanted:
            pipe.exists(self.keys.ready(partition))
        flags = await pipe.execute()
        return [p for p, flag in zip(wanted, flags, strict=True) if not flag]

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
        response["last_loc"] = last_location(_number(lat), _number(lng), c9 or None, _number(speed),
                                             _number(heading), int(ts) if ts and ts != "0" else None)
        return response

    async def nearby(self, origin: str, k: int, limit: int, min_loc_ts_ms: int) -> tuple[list[str], list[str]]:
        """Available drivers in the k-ring of a resolution-9 cell, nearest to its centre first."""
        cells = list(h3.grid_disk(origin, k))
        lat, lng = h3.cell_to_latlng(origin)
        reach = max(haversine_km(lat, lng, *h3.cell_to_latlng(c)) + reach_km(c) for c in cells)
        rings = shards_of_cells(cells, self.shard_resolution)
        groups = self._by_node([list(rings)])
        calls = [("nearby", self._shard_keys(shards),
                  [min_loc_ts_ms, lng, lat, reach * 1.001 + 0.001, *(c for shard in shards for c in rings[shard])])
                 for shards, _ in groups]
        replies = await self._run(calls)
        located = [d for (shards, _), reply in zip(groups, replies, strict=True) for d in _located(reply, shards)]
        ordered = nearest_first({d.driver_id: (d.lat, d.lng) for d in located}, lat, lng)
        return ordered[:limit], cells

    async def candidates(
        self, searches: Sequence[tuple[float, float, float]], count: int, min_loc_ts_ms: int
    ) -> list[tuple[list[tuple[Located, float]], bool]]:
        """For each (lat, lng, radius_km) search: up to `count` available, fresh drivers within radius_km
        of the point, nearest first, with their distance; and whether the search found `count` (more may
        lie beyond). Each search reads only the drivers near its point (in circles growing up to its
        radius until one holds `count`) in the shard cells within its radius, never the fleet; one
        round trip for all, in one call on one Redis and one per shard cell on a cluster."""
        if not searches:
            return []
        shards_of = [shards_within(lat, lng, radius_km, self.shard_resolution) for lat, lng, radius_km in searches]
        calls, groups = [], self._by_node(shards_of)
        for shards, indices in groups:
            number = {shard: j for j, shard in enumerate(shards, 1)}
            args: list = [min_loc_ts_ms, count, FIRST_CIRCLE_KM]
            for i in indices:
                lat, lng, radius_km = searches[i]
                read = [number[shard] for shard in shards_of[i] if shard in number]
                # Redis measures on a slightly different sphere: search a hair wider, then judge by ours,
                # so that a driver exactly radius_km away qualifies.
                args += [lng, lat, radius_km * 1.001 + 0.001, len(read), *read]
            calls.append(("candidates", self._shard_keys(shards), args))
        found: list[dict[str, Located]] = [{} for _ in searches]
        maybe_more = [False] * len(searches)
        for (shards, indices), replies in zip(groups, await self._run(calls), strict=True):
            for i, (searched, located) in zip(indices, replies, strict=True):
                maybe_more[i] |= searched >= count
                found[i].update((d.driver_id, d) for d in _located(located, shards))
        results = []
        for (lat, lng, radius_km), drivers, more in zip(searches, found, maybe_more, strict=True):
            measured = ((d, haversine_km(lat, lng, d.lat, d.lng)) for d in drivers.values())
            within = sorted(((d, km) for d, km in measured if km <= radius_km + 1e-9), key=lambda pair: pair[1])
            results.append((within[:count], more or len(within) > count))
        return results

    # -- reservations and decisions -----------------------------------------------------------

    async def reserve_first(
        self, offers: Sequence[Offer], min_loc_ts_ms: int, retention_s: int, found_in: Mapping[str, str] | None = None,
    ) -> list[Reservation]:
        """For each (order id, candidates) in order, with candidates (driver id, ETA in minutes) best
        first: reserves the first candidate still free, and records the order's decision, naming that
        driver and ETA, for `retention_s`, unless the order already has one, which is returned instead.
        A new decision's assignedAt is Redis's clock in the step that reserved its driver (now_iso in
        common.lua), so it never falls before the driver was freed of its previous trip.
        `found_in`: the shard cell each candidate was found in (Located.shard), whose hints a reserved
        driver leaves. On one Redis, one call does it all (decide.lua); on a cluster, the steps go slot
        by slot (_reserve_in_rounds)."""
        if not offers:
            return []
        if not self.single_node:
            return await self._reserve_in_rounds(offers, min_loc_ts_ms, retention_s)
        found_in = found_in or {}
        shards = sorted({found_in[d] for _, candidates in offers for d, _ in candidates if d in found_in})
        keys = self._shard_keys(shards)
        args: list = [min_loc_ts_ms, retention_s, len(shards), *shards]
        for order_id, candidates in offers:
            keys += [self.keys.decision(order_id), *self._driver_keys(d for d, _ in candidates)]
            args += [order_id, len(candidates)]
            for driver_id, eta in candidates:
                args += [driver_id, eta]
        ((replies, left),) = await self._run([("decide", keys, args)], replicated=True)
        await self.apply_hints([left])
        return [Reservation(outcome, Decision.from_record(orjson.loads(payload)) if outcome != "none" else None,
                            int(position)) for outcome, position, payload in replies]

    async def _reserve_in_rounds(
        self, offers: Sequence[Offer], min_loc_ts_ms: int, retention_s: int
    ) -> list[Reservation]:
        """reserve_first on a Redis Cluster, where an order's decision and its candidates live in
        different slots. In rounds, each one pipelined round trip: every order still looking tries its
        next candidate (reserve.lua, per driver partition), earlier orders first where two want the same
        driver. Then the decisions are recorded (record_decisions.lua, per request partition) and the
        reservations settled (settle.lua): an order that had a decision already gets it back and its new
        driver is released. Until settled, a reservation is provisional and expires (PROVISIONAL_S)."""
        position = [0] * len(offers)  # the candidate each order tries next
        # order -> (driver, its position among the candidates, when reserved by Redis's clock)
        reserved: dict[int, tuple[str, int, str]] = {}
        looking = [i for i, (_, candidates) in enumerate(offers) if candidates]
        while looking:
            attempts: dict[int, list[tuple[int, str]]] = {}  # driver partition -> (order, driver)
            wanted: set[str] = {driver for driver, _, _ in reserved.values()}
            for i in looking:
                candidates = offers[i][1]
                while position[i] < len(candidates) and candidates[position[i]][0] in wanted:
                    position[i] += 1  # reserved for an earlier order of the batch already
                if position[i] < len(candidates):
                    driver = candidates[position[i]][0]
                    wanted.add(driver)
                    attempts.setdefault(self.keys.partition(driver), []).append((i, driver))
            calls = [("reserve", self._driver_keys(d for _, d in tried),
                      [min_loc_ts_ms, PROVISIONAL_S * 1000, *(offers[i][0] for i, _ in tried)])
                     for tried in attempts.values()]
            for tried, (outcomes, at) in zip(attempts.values(), await self._run(calls, replicated=True), strict=True):
                for (i, driver), outcome in zip(tried, outcomes, strict=True):
                    if outcome:
                        reserved[i] = (driver, position[i] + 1, at)
                    position[i] += 1
            looking = [i for i in looking if i not in reserved and position[i] < len(offers[i][1])]
        named = {i: Decision(offers[i][0], at, driver_id=driver, eta=dict(offers[i][1])[driver])
                 for i, (driver, _, at) in reserved.items()}
        recorded = await self._record(list(named.values()), retention_s)
        chosen = dict(zip(named, recorded, strict=True))
        released = [(offers[i][0], reserved[i][0]) for i, decision in chosen.items()
                    if decision.driver_id != reserved[i][0]]
        await self._settle(recorded, released)
        # An order with no driver free may have been decided before (a redelivered request).
        undecided = [i for i in range(len(offers)) if i not in chosen]
        for i, decision in zip(undecided, await self.decisions([offers[i][0] for i in undecided]),
                               strict=True):
            if decision is not None:
                chosen[i] = decision
        results = []
        for i, (_, candidates) in enumerate(offers):
            if i not in chosen:
                results.append(Reservation("none", None, len(candidates)))
            elif chosen[i] == named.get(i):
                results.append(Reservation("reserved", chosen[i], reserved[i][1]))
            else:
                results.append(Reservation("existing", chosen[i], 0))
        return results

    async def _record(self, decisions: Sequence[Decision], ttl_s: int) -> list[Decision]:
        """Records each decision for `ttl_s` unless its order already has one; returns each order's
        decision, the one it had or the one given. One call per request partition."""
        by_partition: dict[int, list[int]] = {}
        for i, decision in enumerate(decisions):
            by_partition.setdefault(self.keys.partition(decision.order_id), []).append(i)
        calls = [("record_decisions", [self.keys.decision(decisions[i].order_id) for i in indices],
                  [ttl_s, *(orjson.dumps(decisions[i].record()) for i in indices)])
                 for indices in by_partition.values()]
        recorded: list[Decision | None] = [None] * len(decisions)
        for indices, replies in zip(by_partition.values(), await self._run(calls, replicated=True), strict=True):
            for i, raw in zip(indices, replies, strict=True):
                recorded[i] = Decision.from_record(orjson.loads(raw))
        return recorded

    async def _settle(self, decisions: Sequence[Decision], released: Sequence[tuple[str, str]] = ()) -> None:
        """Keeps the driver of every assigned decision reserved for its order for good, and releases the
        (order, driver) reservations in `released`; then applies the hints' changes."""
        by_partition: dict[int, list[tuple[str, str, str]]] = {}
        for decision in decisions:
            if decision.assigned:
                by_partition.setdefault(self.keys.partition(decision.driver_id), []).append(
                    (decision.driver_id, decision.order_id, "1"))
        for order_id, driver_id in released:
            by_partition.setdefault(self.keys.partition(driver_id), []).append((driver_id, order_id, "0"))
        calls = [("settle", self._driver_keys(d for d, _, _ in entries),
                  [value for _, order_id, keep in entries for value in (order_id, keep)])
                 for entries in by_partition.values()]
        replies = await self._run(calls, replicated=True)
        for entries, (_, lost) in zip(by_partition.values(), replies, strict=True):
            for position in lost:
                driver_id, order_id, _ = entries[int(position) - 1]
                log.error("decided_driver_held_by_another_order", order_id=order_id, driver_id=driver_id,
                          holder=await self.reservation_holder(driver_id))
        await self.apply_hints(hints for hints, _ in replies)

    async def decision(self, order_id: str) -> Decision | None:
        (decision,) = await self.decisions([order_id])
        return decision

    async def decisions(self, order_ids: Sequence[str]) -> list[Decision | None]:
        raws = await self._values([self.keys.decision(order_id) for order_id in order_ids])
        return [Decision.from_record(orjson.loads(raw)) if raw else None for raw in raws]

    async def _values(self, keys: Sequence[str]) -> list[str | None]:
        """Each key's value, in one round trip (a cluster's pipeline splits it by node)."""
        if not keys:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return list(await pipe.execute())

    async def record_failures(self, failures: Sequence[Decision], ttl_s: int) -> list[Decision]:
        """Records each failed decision for `ttl_s` unless its order already has one; returns each
        order's decision, the existing one or the failure. One round trip for all, and on a cluster one
        more to keep the drivers of orders decided before (another worker's, or a delivery before a crash)."""
        if not failures:
            return []
        recorded = await self._record(failures, ttl_s)
        if not self.single_node:
            # A decision recorded before a worker stopped may have left its reservation provisional
            # (_reserve_in_rounds); on one Redis, decide.lua made both at once.
            await self._settle([decision for decision in recorded if decision.assigned])
        return recorded

    async def forget_unexpiring_decisions(self, order_ids: Sequence[str]) -> int:
        """Deletes the decisions of these orders that Redis would keep forever (see forget_unexpiring.lua)."""
        by_partition: dict[int, list[str]] = {}
        for order_id in order_ids:
            by_partition.setdefault(self.keys.partition(order_id), []).append(self.keys.decision(order_id))
        return sum(await self._run([("forget_unexpiring", keys, []) for keys in by_partition.values()]))

    async def forget_old_layout(self, progress: Callable[[int], None] = lambda removed: None) -> int:
        """Deletes the keys of the layout before the hash-tagged one (0.1.0's index, reservations and
        decisions: names without a `{`), keeping the epoch and the DLQ tools' ledger; returns how many.
        Safe while workers run: they neither read nor write those keys."""
        kept = (self.keys.epoch, self.keys.dlq_replayed(""))
        removed, batch = 0, []
        async for key in self.redis.scan_iter(match=f"{self.keys.prefix}*", count=OLD_LAYOUT_BATCH):
            if "{" not in key and not key.startswith(kept):
                batch.append(key)
            if len(batch) >= OLD_LAYOUT_BATCH:
                removed += await self.redis.unlink(*batch)
                batch = []
                progress(removed)
        if batch:
            removed += await self.redis.unlink(*batch)
        return removed

    async def reservation_holder(self, driver_id: str) -> str | None:
        (holder,) = await self.reservation_holders([driver_id])
        return holder

    async def reservation_holders(self, driver_ids: Sequence[str]) -> list[str | None]:
        """The order each driver is reserved for, if any; one round trip for all."""
        return await self._values([self.keys.reservation(driver_id) for driver_id in driver_ids])

    async def ping(self) -> bool:
        return bool(await self.redis.ping())


def _located(payload: str, shards: Sequence[str]) -> list[Located]:
    """The flat (id, lat, lng, ts, j) quintuples of candidates.lua and nearby.lua, j the number of the
    shard (of `shards`) each was found in."""
    flat = orjson.loads(payload)
    return [
        Located(flat[i], float(flat[i + 1]), float(flat[i + 2]), int(flat[i + 3]), shards[int(flat[i + 4]) - 1])
        for i in range(0, len(flat), 5)
    ]


def _text(value: float | None) -> str:
    """A number as the index stores it: repr keeps every digit of a float; "" is none."""
    return "" if value is None else repr(value)


def _number(text: str | None) -> float | None:
    return float(text) if text else None


def now_ms() -> int:
    return int(time.time() * 1000)
