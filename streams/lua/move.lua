-- move.lua: writes drivers' new positions to the index, one call per driver partition for a batch of
-- pings that changed nothing else (streams.index_writer stages them apart from other changes).
-- KEYS[1] the partition's ready key; KEYS[2i], KEYS[2i + 1] driver i's hash and reservation key.
-- ARGV[1] the writer's fence token, ARGV[2] one JSON array of [id, version, lat, lng, ts, cell, shard,
-- speed, heading] per driver (RegionIndex._move_entry).
-- Returns {one integer per driver, the hints' changes}: 1 applied, 0 stale, -1 fenced, -2 held, as
-- upsert.lua; -3 when the index cannot take a position alone: it has no such driver, or its document was
-- written under an older token (a rebalance since), and the writer sends the whole session instead. The
-- hints' changes as upsert.lua's.
--
-- The driver's document stays as upsert.lua left it. Its availability too, but for one case: an
-- assignable driver whose provisional reservation (reserve.lua) expired, because the assignment worker
-- that made it stopped before it settled the order, is available again.
local mine = tonumber(ARGV[1])
local ready = redis.call('EXISTS', KEYS[1]) == 1
local hints = {}

local function move(driver, reservation, id, ver, lat, lng, ts, c9, shard, spd, hdg)
  if not ready then return -2 end
  local cur = redis.call('HMGET', driver, 'ver', 'fence', 'avail', 'sh', 'asg')
  if not cur[1] then return -3 end
  local fence = tonumber(cur[2] or '0')
  if fence > mine then return -1 end
  if fence < mine then return -3 end
  if tonumber(cur[1]) >= tonumber(ver) then return 0 end
  local avail = cur[3]
  if avail ~= '1' and cur[5] == '1' and redis.call('EXISTS', reservation) == 0 then avail = '1' end
  redis.call('HSET', driver, 'ver', ver, 'lat', lat, 'lng', lng, 'ts', ts, 'c9', c9, 'sh', shard, 'spd', spd,
             'hdg', hdg, 'avail', avail)
  if cur[4] and cur[4] ~= shard then hints[#hints + 1] = {cur[4], id} end
  if avail == '1' then
    hints[#hints + 1] = {shard, id, lng, lat, ts, c9}
  else
    hints[#hints + 1] = {shard, id}
  end
  return 1
end

local results = {}
for i, entry in ipairs(cjson.decode(ARGV[2])) do
  results[i] = move(KEYS[2 * i], KEYS[2 * i + 1], unpack(entry))
end
if #hints == 0 then return {results, '[]'} end
return {results, cjson.encode(hints)}
