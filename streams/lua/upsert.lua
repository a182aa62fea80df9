-- upsert.lua: writes drivers' session changes to the index, one call for a whole batch.
-- KEYS: none (the keys are built from the prefixes, one driver at a time).
-- ARGV[1] driver hash prefix, ARGV[2] reservation prefix, ARGV[3] GEO set of available drivers,
-- ARGV[4] cell set prefix, ARGV[5] the writer's fence token, ARGV[6] '1' for a rebuild; ARGV[7..] one
-- JSON array per driver: [id, ready key, version, session document without its position, lat, lng,
-- ts, cell, assignable, closed order ids, trip, speed, heading] (RegionIndex._session_entry). The
-- position fields are the document's `last_loc` (streams.index.RegionIndex.session_response), so
-- that a ping rewrites them alone (move.lua).
-- Returns one integer per driver, in order: 1 applied, 0 stale (the index has this version or a newer
-- one), -1 fenced (written by a newer owner), -2 held (its partition is not ready).
--
-- A driver's reservation held by an order its session has closed (delivered or cancelled) is released
-- first, always, even for a stale or fenced write, since a finished order must never keep a driver, and
-- also on a rebuild, which mends a release lost in a crash. Then the change is applied unless the index
-- holds a newer version, and the driver moves between its resolution-9 cell set and the GEO set: it is
-- in both only if assignable and not reserved (Redis GEO stops at 85.05 degrees of latitude; no
-- delivery fleet works beyond it). One JSON argument per driver: redis-py spent more packing seventeen
-- arguments per driver than Redis spent running the script.
-- Fencing (streams.logic.fencing): a write with an older token than the driver's last writer comes
-- from a worker that lost the partition without noticing (paused, cut off) and is refused. A newer token
-- wins whatever the version, since a new owner restarts from the changelog and may be behind the
-- zombie's unflushed versions. A rebuild rewrites the same version too: a cell set may have been lost
-- while the driver's hash survived.
-- Readiness: a partition's ready key marks it as rebuilt since Redis was last emptied. Without it any
-- write but a rebuild is held and stays pending in the writer: a reservation lost with Redis comes back
-- only when the driver's session has heard of its trip, so until the owner has applied every driver
-- command sent before the wipe, no write may show one of its drivers as free (streams.agents.upkeep).
local drivers, reservations, available, cells = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local mine, rebuild = tonumber(ARGV[5]), ARGV[6] == '1'

local function upsert(id, ready, ver, doc, lat, lng, ts, c9, assignable, closed, trip, spd, hdg)
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
             'avail', avail, 'spd', spd, 'hdg', hdg)
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
