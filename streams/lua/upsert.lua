-- upsert.lua: writes drivers' session changes to the index, one call per driver partition and batch.
-- KEYS[1] the partition's ready key; KEYS[2i], KEYS[2i + 1] driver i's hash and reservation key.
-- ARGV[1] the writer's fence token, ARGV[2] '1' for a rebuild; ARGV[2 + i] driver i's JSON array:
-- [id, version, session document without its position, lat, lng, ts, cell, shard, assignable, closed
-- order ids, trip, speed, heading] (RegionIndex._session_entry). The position fields are the document's
-- `last_loc` (streams.index.RegionIndex.session_response), so that a ping rewrites them alone (move.lua).
-- Returns {one integer per driver, the hints' changes}: 1 applied, 0 stale (the index has this version or
-- a newer one), -1 fenced (written by a newer owner), -2 held (the partition is not ready); the changes
-- for hints.lua as one JSON array of [shard, id, lng, lat, ts, cell] (available there) and [shard, id]
-- (not available there), which the writer applies next, shard by shard.
--
-- A driver's reservation held by an order its session has closed (delivered or cancelled) is released
-- first, always, even for a stale or fenced write, since a finished order must never keep a driver, and
-- also on a rebuild, which mends a release lost in a crash. Then the change is applied unless the index
-- holds a newer version: the driver is available only if assignable and not reserved.
-- Fencing (streams.logic.fencing): a write with an older token than the driver's last writer comes
-- from a worker that lost the partition without noticing (paused, cut off) and is refused. A newer token
-- wins whatever the version, since a new owner restarts from the changelog and may be behind the
-- zombie's unflushed versions. A rebuild rewrites the same version too: a shard's hints may have been
-- lost while the driver's hash survived.
-- Readiness: the ready key marks the partition as rebuilt since its slot was last emptied. Without it any
-- write but a rebuild is held and stays pending in the writer: a reservation lost with Redis comes back
-- only when the driver's session has heard of its trip, so until the owner has applied every driver
-- command sent before the wipe, no write may show one of its drivers as free (streams.agents.upkeep).
local mine, rebuild = tonumber(ARGV[1]), ARGV[2] == '1'
local ready = rebuild or redis.call('EXISTS', KEYS[1]) == 1
local hints = {}

local function upsert(driver, reservation, id, ver, doc, lat, lng, ts, c9, shard, assignable, closed, trip, spd,
                      hdg)
  local holder = redis.call('GET', reservation)
  if holder then
    for _, order in ipairs(closed) do
      if order == holder then redis.call('DEL', reservation) break end
    end
  end
  if not ready then return -2 end
  local cur = redis.call('HMGET', driver, 'ver', 'fence', 'sh')
  if cur[1] then
    local fence = tonumber(cur[2] or '0')
    if fence > mine then return -1 end
    if fence == mine then
      local current, myver = tonumber(cur[1]), tonumber(ver)
      if current > myver or (current == myver and not rebuild) then return 0 end
    end
  end
  local avail = '0'
  if assignable == '1' and redis.call('EXISTS', reservation) == 0 then avail = '1' end
  -- A driver on a trip (`trip`, the session's trip_id) holds that order: restore the reservation if
  -- Redis lost it (emptied, then rebuilt from the table), so reservations stay reconciled with sessions.
  if trip ~= '' and redis.call('EXISTS', reservation) == 0 then redis.call('SET', reservation, trip) end
  redis.call('HSET', driver, 'ver', ver, 'fence', ARGV[1], 'doc', doc, 'lat', lat, 'lng', lng, 'ts', ts, 'c9', c9,
             'sh', shard, 'avail', avail, 'asg', assignable, 'spd', spd, 'hdg', hdg)
  if cur[3] and cur[3] ~= shard then hints[#hints + 1] = {cur[3], id} end
  if avail == '1' and c9 ~= '' then
    hints[#hints + 1] = {shard, id, lng, lat, ts, c9}
  elseif shard ~= '' then
    hints[#hints + 1] = {shard, id}
  end
  return 1
end

local results = {}
for i = 3, #ARGV do
  local n = i - 2
  results[n] = upsert(KEYS[2 * n], KEYS[2 * n + 1], unpack(cjson.decode(ARGV[i])))
end
if #hints == 0 then return {results, '[]'} end  -- cjson writes an empty table as {}
return {results, cjson.encode(hints)}
