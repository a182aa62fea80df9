-- move.lua: writes drivers' new positions to the index, one call for a whole batch of pings that
-- changed nothing else (streams.index_writer stages them apart from other changes).
-- KEYS: none (the keys are built from the prefixes, one driver at a time).
-- ARGV[1] driver hash prefix, ARGV[2] GEO set of available drivers, ARGV[3] cell set prefix, ARGV[4]
-- the writer's fence token, ARGV[5] one JSON array of [id, ready key, version, lat, lng, ts, cell,
-- speed, heading] per driver (RegionIndex._move_entry).
-- Returns one integer per driver, in order: 1 applied, 0 stale, -1 fenced, -2 held, as upsert.lua;
-- -3 when the index cannot take a position alone: it has no such driver, or its document was written
-- under an older token (a rebalance since), and the writer sends the whole session instead.
--
-- The driver's availability and document stay as upsert.lua or a reservation left them; an available
-- driver moves between cell sets when its cell changed, and to its new point in the GEO set.
local drivers, available, cells = ARGV[1], ARGV[2], ARGV[3]
local mine = tonumber(ARGV[4])

local function move(id, ready, ver, lat, lng, ts, c9, spd, hdg)
  if redis.call('EXISTS', ready) == 0 then return -2 end
  local driver = drivers .. id
  local cur = redis.call('HMGET', driver, 'ver', 'fence', 'avail', 'c9')
  if not cur[1] then return -3 end
  local fence = tonumber(cur[2] or '0')
  if fence > mine then return -1 end
  if fence < mine then return -3 end
  if tonumber(cur[1]) >= tonumber(ver) then return 0 end
  redis.call('HSET', driver, 'ver', ver, 'lat', lat, 'lng', lng, 'ts', ts, 'c9', c9, 'spd', spd, 'hdg', hdg)
  if cur[3] == '1' then
    if cur[4] ~= c9 then
      redis.call('SREM', cells .. cur[4], id)
      redis.call('SADD', cells .. c9, id)
    end
    if math.abs(tonumber(lat)) <= 85.05112878 then
      redis.call('GEOADD', available, lng, lat, id)
    else
      redis.call('ZREM', available, id)
    end
  end
  return 1
end

local results = {}
for i, entry in ipairs(cjson.decode(ARGV[5])) do
  results[i] = move(unpack(entry))
end
return results
