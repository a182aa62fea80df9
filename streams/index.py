"""The shared region index in Redis: session documents, H3 cell sets of available drivers, atomic
reservations and per-order decisions. Every worker reads and writes it; Lua keeps each step atomic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import h3
import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from streams.logic.geo import NEARBY_RESOLUTION, haversine_km, nearest_first
from streams.logic.sessions import DriverSession, session_response
from streams.routing import key_partition

# Writes drivers' sessions to the index. ARGV[1..4] are the prefixes of driver and reservation keys,
# the GEO set of available drivers and the prefix of the cell sets (RegionIndex builds all four),
# ARGV[5] the writer's fence token, ARGV[6] '1' for a rebuild; then one JSON array per driver (see
# RegionIndex._session_entry): one call and one reply for a whole batch, and one argument per driver,
# where redis-py spent more packing seventeen arguments per driver than Redis spent running the script.
# For each driver, in order, one result:
# First releases the driver's reservation if it is held by an order the session has closed (delivered
# or cancelled): always, even for a stale or fenced write, since a finished order must never keep a
# driver, and also on a rebuild, which mends a release lost in a crash. Then applies the change unless
# the index already holds a newer version of that driver, and moves the driver between its resolution-9
# cell set and the GEO set of available drivers: it is in both only if assignable and not reserved
# (Redis GEO stops at 85.05 degrees of latitude; no delivery fleet works beyond it).
# Fencing (streams.logic.fencing): a write with an older token than the driver's last writer comes
# from a worker that lost the partition without noticing (paused, cut off): it is refused (-1). A
# newer token wins whatever the version, since a new owner restarts from the changelog and may be
# behind the zombie's unflushed versions.
# A rebuild rewrites the same version too: a cell set may have been lost while the driver's hash
# survived, and only rewriting the driver puts it back.
# Readiness: the driver's ready key (RegionIndex.ready_key) marks its partition as rebuilt since Redis was last
# emptied. Without it, any write but a rebuild is held (-2) and stays pending in the writer: a
# reservation lost with Redis comes back only when the driver's session has heard of its trip, so until
# the owner has applied every driver command sent before the wipe, no write may show one of its
# drivers as free (see streams.agents.upkeep).
UPSERT = """
local drivers, reservations, available, cells = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local mine, rebuild = tonumber(ARGV[5]), ARGV[6] == '1'

local function upsert(id, ready, ver, doc, lat, lng, ts, c9, assignable, closed, trip)
  local driver, reservation = drivers .. id, reservations .. id
  local holder = redis.call('GET', reservation)
  if holder then
    for _, order in ipairs(closed) do
      if order == holder then redis.call('DEL', reservation) break end
    end
  end
  if not rebuild and redis.call('EXISTS', ready) == 0 then return -2 end
  local cur = redis.call('HMGET', driver, 'ver', 'fence')
  if cur[1] then
    local fence = tonumber(cur[2] or '0')
    if fence > mine then return -1 end
    if fence == mine then
      local current, myver = tonumber(cur[1]), tonumber(ver)
      if current > myver or (current == myver and not rebuild) then return 0 end
    end
  end
  local old = redis.call('HMGET', driver, 'avail', 'c9')
  if old[1] == '1' then
    redis.call('SREM', cells .. old[2], id)
    redis.call('ZREM', available, id)
  end
  local avail = '0'
  if assignable == '1' and redis.call('EXISTS', reservation) == 0 then avail = '1' end
  -- A driver on a trip (`trip`, the session's trip_id) holds that order: restore the reservation if
  -- Redis lost it (emptied, then rebuilt from the table), so reservations stay reconciled with sessions.
  if trip ~= '' and redis.call('EXISTS', reservation) == 0 then redis.call('SET', reservation, trip) end
  redis.call('HSET', driver, 'ver', ver, 'fence', ARGV[5], 'doc', doc, 'lat', lat, 'lng', lng, 'ts', ts, 'c9', c9,
             'avail', avail)
  if avail == '1' then
    redis.call('SADD', cells .. c9, id)
    if math.abs(tonumber(lat)) <= 85.05112878 then
      redis.call('GEOADD', available, lng, lat, id)
    end
  end
  return 1
end

local results = {}
for i = 7, #ARGV do
  results[i - 6] = upsert(unpack(cjson.decode(ARGV[i])))
end
return results
"""
# Drivers per UPSERT call: Redis serves no other client while a script runs, and 500 drivers took
# 40 ms here; 100 keep a reservation from waiting more than a few ms behind an index rebuild.
UPSERT_BATCH = 100

# Reserves a driver for each of several orders, in order: for each, the first of its candidates (best
# first) that is still free, available and fresh, unless the order already has a decision (a
# redelivered request, or a paused worker racing the partition's new owner), which is returned instead:
# a decision, once made, is never overwritten. One call for a whole batch of requests; an earlier order
# of the batch may take a later one's best candidate, which then gets its next.
# ARGV[1..5]: the prefixes of driver, reservation and decision keys, the GEO set of available drivers,
# the prefix of the cell sets; ARGV[6] the oldest position still fresh; ARGV[7] how long a decision is
# kept (seconds); then per order its id, the number n of its candidates and n pairs (driver id, the
# decision naming that driver).
# Per order: {'reserved', position of the driver among its candidates (1-based), decision},
# {'existing', 0, decision} or {'none', n, ''}.
RESERVE_FIRST = """
local drivers, reservations, decisions, available, cells = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local min_ts, retention = tonumber(ARGV[6]), ARGV[7]

local function reserve(order, first, n)
  local existing = redis.call('GET', decisions .. order)
  if existing then return {'existing', 0, existing} end
  for k = 0, n - 1 do
    local id, decision = ARGV[first + 2 * k], ARGV[first + 2 * k + 1]
    if redis.call('EXISTS', reservations .. id) == 0 then
      local d = redis.call('HMGET', drivers .. id, 'avail', 'c9', 'ts')
      if d[1] == '1' and tonumber(d[3]) >= min_ts then
        redis.call('SET', reservations .. id, order)
        redis.call('SET', decisions .. order, decision, 'EX', retention)
        redis.call('HSET', drivers .. id, 'avail', '0')
        redis.call('SREM', cells .. d[2], id)
        redis.call('ZREM', available, id)
        return {'reserved', k + 1, decision}
      end
    end
  end
  return {'none', n, ''}
end

local results, i = {}, 8
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  results[#results + 1] = reserve(ARGV[i], i + 2, n)
  i = i + 2 + 2 * n
end
return results
"""

# The drivers among a list of ids that are available with a position at least as fresh as ARGV[2],
# as flat (id, lat, lng, ts) quadruples in one JSON array: searches read them inside Redis, one round
# trip in all, instead of one read per driver from the worker (redis-py spends more on each call than
# Redis does), and one string to parse instead of four RESP elements per driver (redis-py's parser is
# Python, and spent more on a batch of searches' replies than on anything else of the assignment).
LOCATE_AVAILABLE = """
local function locate(ids, driver_prefix, min_ts)
  local out = {}
  for _, id in ipairs(ids) do
    local d = redis.call('HMGET', driver_prefix .. id, 'lat', 'lng', 'ts', 'avail')
    local ts = tonumber(d[3])
    if d[4] == '1' and d[1] and d[1] ~= '' and ts and ts >= min_ts then
      out[#out + 1] = id
      out[#out + 1] = d[1]
      out[#out + 1] = d[2]
      out[#out + 1] = d[3]
    end
  end
  if #out == 0 then return '[]' end  -- cjson writes an empty table as {}
  return cjson.encode(out)
end
"""

# The sessions API's search: the k-ring's cell sets (KEYS) united, then located.
NEARBY = LOCATE_AVAILABLE + """
return locate(redis.call('SUNION', unpack(KEYS)), ARGV[1], tonumber(ARGV[2]))
"""

# The assignment's searches, one call for a batch of requests: for each (lng, lat, km) triple from ARGV[5]
# on, up to ARGV[3] drivers of the GEO set within that many km of the point, nearest first, located;
# and how many the GEO search found (when it found the count, more may lie beyond).
# GEOSEARCH reads and sorts every member within its radius, however small its COUNT: one search of 5 km
# across a 10,000-driver city cost Redis 830 us, more CPU than the worker spent on the request. So each
# search grows from ARGV[4] km, four times wider each time, up to its radius, and stops at the first
# circle holding the count: the members of that circle are nearer than anything outside it, so they are
# the nearest within the whole radius too.
CANDIDATES = LOCATE_AVAILABLE + """
local count = tonumber(ARGV[3])
local function nearest(lng, lat, km)
  local r = math.min(km, tonumber(ARGV[4]))
  while true do
    local ids = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', lng, lat, 'BYRADIUS', r, 'km', 'ASC', 'COUNT', count)
    if #ids >= count or r >= km then return ids end
    r = math.min(km, r * 4)
  end
end

local results = {}
for i = 5, #ARGV, 3 do
  local ids = nearest(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]))
  results[#results + 1] = {#ids, locate(ids, ARGV[1], tonumber(ARGV[2]))}
end
return results
"""
# The circle a candidate search starts from (CANDIDATES): in a city of a few drivers per km2 it holds
# a request's handful of candidates already.
FIRST_CIRCLE_KM = 0.5

# Records a failed decision unless the order already has one; failures expire so a later retry of
# the same order gets a fresh attempt.
RECORD_FAILURE = """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""

# Deletes the decision keys among KEYS that have no expiry: those 0.1.0 wrote, which kept them forever.
# A key with one (any decision since) is left to expire by itself: a retried order's newer decision may
# stand under the same key as the expired one the sweep found.
FORGET_UNEXPIRING = """
local forgotten = 0
for _, key in ipairs(KEYS) do
  if redis.call('TTL', key) == -1 then forgotten = forgotten + redis.call('DEL', key) end
end
return forgotten
"""


@dataclass(frozen=True)
class WriteResult:
    applied: int = 0
    stale: int = 0  # the index already had this version or a newer one
    fenced: int = 0  # refused: the driver's state was written by a newer owner (a higher fence token)
    held: tuple[str, ...] = ()  # drivers whose partition is not ready yet: to be written again later


@dataclass(frozen=True)
class Located:
    driver_id: str
    lat: float
    lng: float
    loc_ts_ms: int


@dataclass(frozen=True)
class Reservation:
    outcome: str  # reserved | existing | none
    decision: dict | None
    # reserved: the reserved driver's position among the order's candidates (1 for the first);
    # none: how many candidates were tried (all of them)
    position: int


class RegionIndex:
    def __init__(self, client: aioredis.Redis, prefix: str, partitions: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.partitions = partitions
        self._upsert = client.register_script(UPSERT)
        self._reserve_first = client.register_script(RESERVE_FIRST)
        self._record_failure = client.register_script(RECORD_FAILURE)
        self._forget_unexpiring = client.register_script(FORGET_UNEXPIRING)
        self._nearby = client.register_script(NEARBY)
        self._candidates = client.register_script(CANDIDATES)

    @classmethod
    def from_url(cls, url: str, prefix: str, partitions: int) -> RegionIndex:
        return cls(aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=30), prefix, partitions)

    def driver_key(self, driver_id: str) -> str:
        return f"{self.prefix}d:{driver_id}"

    def reservation_key(self, driver_id: str) -> str:
        return f"{self.prefix}r:{driver_id}"

    def decision_key(self, order_id: str) -> str:
        return f"{self.prefix}o:{order_id}"

    @property
    def available_key(self) -> str:
        """A Redis GEO set of every available driver: the assignment's nearest-first search."""
        return f"{self.prefix}geo:available"

    @property
    def epoch_key(self) -> str:
        return f"{self.prefix}meta:epoch"

    def ready_key(self, partition: int) -> str:
        return f"{self.prefix}meta:ready:{partition}"

    @property
    def cell_prefix(self) -> str:
        """Of the sets of available drivers per resolution-9 cell (the `nearby` API's)."""
        return f"{self.prefix}c{NEARBY_RESOLUTION}:"

    # -- writes from the sessions agent ---------------------------------------------------------

    async def write_sessions(
        self, sessions: Iterable[DriverSession], fence: int, rebuild: bool = False
    ) -> WriteResult:
        """Applies session changes in one pipelined round trip, UPSERT_BATCH drivers per script call,
        fenced by the writer's token."""
        sessions = list(sessions)
        batches = [
            [fence, "1" if rebuild else "0", *map(self._session_entry, sessions[start : start + UPSERT_BATCH])]
            for start in range(0, len(sessions), UPSERT_BATCH)
        ]
        if not batches:
            return WriteResult()
        try:
            results = await self._upsert_batches(batches)
        except NoScriptError:
            # Redis restarted or was replaced and forgot the script: load it and send again.
            await self.redis.script_load(UPSERT)
            results = await self._upsert_batches(batches)
        held = tuple(s.driver_id for s, result in zip(sessions, results, strict=True) if result == -2)
        return WriteResult(applied=results.count(1), stale=results.count(0), fenced=results.count(-1), held=held)

    async def _upsert_batches(self, batches: list[list[object]]) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for args in batches:
            pipe.evalsha(self._upsert.sha, 0, self.driver_key(""), self.reservation_key(""), self.available_key,
                         self.cell_prefix, *args)
        return [result for batch in await pipe.execute() for result in batch]

    def _session_entry(self, session: DriverSession) -> bytes:
        """One driver's arguments of UPSERT, all strings (Lua would print numbers with 14 digits)."""
        return orjson.dumps([
            session.driver_id,
            self.ready_key(key_partition(session.driver_id.encode(), self.partitions)),
            str(session.version),
            orjson.dumps(session_response(session)).decode(),
            "" if session.lat is None else repr(session.lat),
            "" if session.lng is None else repr(session.lng),
            str(session.loc_ts_ms or 0),
            session.h3_res9 or "",
            "1" if session.assignable else "0",
            list(session.closed_trips),
            session.trip_id or "",
        ])

    # -- the index's generation: lets every worker notice Redis was emptied or replaced ---------

    async def current_epoch(self) -> str:
        """The epoch of the index; creates one when Redis has none (emptied, or a new server)."""
        epoch = await self.redis.get(self.epoch_key)
        if epoch is None:
            await self.redis.set(self.epoch_key, uuid.uuid4().hex, nx=True)
            epoch = await self.redis.get(self.epoch_key)
        return epoch

    async def unready(self, partitions: Iterable[int]) -> list[int]:
        """Of these partitions, those not rebuilt since Redis was last emptied."""
        wanted = sorted(partitions)
        if not wanted:
            return []
        flags = await self.redis.mget([self.ready_key(p) for p in wanted])
        return [p for p, flag in zip(wanted, flags, strict=True) if flag is None]

    async def mark_ready(self, partitions: Iterable[int], epoch: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for partition in partitions:
            pipe.set(self.ready_key(partition), epoch)
        await pipe.execute()

    async def request_rebuild(self) -> str:
        """Starts a new epoch: every worker rebuilds its part of the index on its next check."""
        epoch = uuid.uuid4().hex
        await self.redis.set(self.epoch_key, epoch)
        return epoch

    # -- reads ------------------------------------------------------------------------------------

    async def session_document(self, driver_id: str) -> bytes | None:
        return await self.redis.hget(self.driver_key(driver_id), "doc")

    async def nearby(self, origin: str, k: int, limit: int, min_loc_ts_ms: int) -> tuple[list[str], list[str]]:
        """Available drivers in the k-ring of a resolution-9 cell, nearest to its centre first."""
        cells = list(h3.grid_disk(origin, k))
        located = _located(await self._nearby(keys=[self.cell_prefix + c for c in cells],
                                              args=[self.driver_key(""), min_loc_ts_ms]))
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
        args: list = [self.driver_key(""), min_loc_ts_ms, count, FIRST_CIRCLE_KM]
        for lat, lng, radius_km in searches:
            # Redis measures on a slightly different sphere: search a hair wider, then judge by ours,
            # so that a driver exactly radius_km away qualifies.
            args += [lng, lat, radius_km * 1.001 + 0.001]
        replies = await self._candidates(keys=[self.available_key], args=args)
        results = []
        for (lat, lng, radius_km), (searched, located) in zip(searches, replies, strict=True):
            found = [(d, haversine_km(lat, lng, d.lat, d.lng)) for d in _located(located)]
            within = sorted(((d, km) for d, km in found if km <= radius_km + 1e-9), key=lambda pair: pair[1])
            results.append((within, searched >= count))
        return results

    # -- reservations and decisions -----------------------------------------------------------

    async def reserve_first(
        self, offers: Sequence[tuple[str, Sequence[tuple[str, dict]]]], min_loc_ts_ms: int, retention_s: int
    ) -> list[Reservation]:
        """For each (order id, candidates) in order, with candidates (driver id, the decision naming
        that driver) best first: reserves the first candidate still free, and records its decision for
        `retention_s`, unless the order already has one, which is returned instead. One round trip for
        all."""
        if not offers:
            return []
        args: list = [self.driver_key(""), self.reservation_key(""), self.decision_key(""), self.available_key,
                      self.cell_prefix, min_loc_ts_ms, retention_s]
        for order_id, candidates in offers:
            args += [order_id, len(candidates)]
            for driver_id, decision in candidates:
                args += [driver_id, orjson.dumps(decision)]
        replies = await self._reserve_first(args=args)
        return [
            Reservation(outcome, orjson.loads(payload) if outcome != "none" else None, int(position))
            for outcome, position, payload in replies
        ]

    async def decision(self, order_id: str) -> dict | None:
        raw = await self.redis.get(self.decision_key(order_id))
        return orjson.loads(raw) if raw else None

    async def record_failure(self, order_id: str, decision: dict, ttl_s: int) -> dict:
        raw = await self._record_failure(keys=[self.decision_key(order_id)], args=[orjson.dumps(decision), ttl_s])
        return orjson.loads(raw)

    async def forget_unexpiring_decisions(self, order_ids: Sequence[str]) -> int:
        """Deletes the decisions of these orders that Redis would keep forever (see FORGET_UNEXPIRING)."""
        if not order_ids:
            return 0
        return int(await self._forget_unexpiring(keys=[self.decision_key(o) for o in order_ids]))

    async def reservation_holder(self, driver_id: str) -> str | None:
        return await self.redis.get(self.reservation_key(driver_id))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())


def _located(payload: str) -> list[Located]:
    """The (id, lat, lng, ts) quadruples of LOCATE_AVAILABLE."""
    flat = orjson.loads(payload)
    return [
        Located(flat[i], float(flat[i + 1]), float(flat[i + 2]), int(flat[i + 3])) for i in range(0, len(flat), 4)
    ]


def now_ms() -> int:
    return int(time.time() * 1000)


class IndexWriter:
    """Collects session changes and writes them to the index in batches. Only the newest
    version of each driver is kept while waiting; the index is derived state, rebuilt from the
    table when Redis is emptied, so a batch that keeps failing waits and is tried again."""

    def __init__(self, index: RegionIndex, metrics, settings) -> None:
        self._index = index
        self._metrics = metrics
        self._settings = settings
        self._pending: dict[str, DriverSession] = {}
        self.failures = 0
        # What this worker last rebuilt the index for: the index's epoch and the rebalance count.
        self.epoch: str | None = None
        self.rebalance = -1
        # While partitions are not ready: which, and the driver-command offsets to apply first.
        self.unready: set[int] = set()
        self.catch_up: dict[int, int] | None = None

    def stage(self, session: DriverSession) -> None:
        self._pending[session.driver_id] = session

    @property
    def pending(self) -> int:
        return len(self._pending)

    def forget_all(self) -> None:
        """Drops what waits: after a rebalance some of it may be another worker's now, and flushed
        with this worker's new token it would fence the new owner out. The rebuild that follows every
        rebalance rewrites this worker's sessions from its table."""
        self._pending.clear()

    async def flush(self, fence: int) -> WriteResult:
        if not self._pending:
            return WriteResult()
        batch, self._pending = self._pending, {}
        if self.unready:
            # Redis would refuse them anyway: keep them back without a round trip each.
            partitions = self._settings.partitions
            for driver_id in [d for d in batch if key_partition(d.encode(), partitions) in self.unready]:
                self._pending[driver_id] = batch.pop(driver_id)
            if not batch:
                return WriteResult()
        started = time.perf_counter()
        try:
            result = await self._index.write_sessions(batch.values(), fence)
        except (aioredis.RedisError, OSError):
            # Put the batch back under anything newer that arrived meanwhile.
            for driver_id, change in batch.items():
                self._pending.setdefault(driver_id, change)
            self.failures += 1
            raise
        self.failures = 0
        for driver_id in result.held:
            self._pending.setdefault(driver_id, batch[driver_id])
        self._metrics.index_write_seconds.observe(time.perf_counter() - started)
        if result.fenced:
            self._metrics.fenced_writes.labels(store="index").inc(result.fenced)
        return result
