-- hints.lua: applies changes to one shard cell's hints, the available drivers that searches read.
-- KEYS[1] the shard's GEO set of available drivers, KEYS[2] its hash of their fixes ("<ts> <cell> <lat>
-- <lng>": the GEO set keeps a position to within a metre or so, the searches answer with the exact one).
-- ARGV[1] one JSON array of changes: [id, lng, lat, ts, cell] for a driver available at that fix,
-- [id] for one that is not (or no longer in this shard). Returns how many changes were applied.
--
-- Hints are only where to look: the driver's own hash (in its partition's slot) says whether it is
-- available, and a reservation checks it there (reserve.lua). A hint may lag its driver by one write
-- (two writers' hints crossing: a reservation and a ping); the driver's next ping mends it.
local changes = cjson.decode(ARGV[1])
for _, change in ipairs(changes) do
  local id = change[1]
  if #change == 1 or math.abs(tonumber(change[3])) > 85.05112878 then
    -- Redis GEO stops at 85.05 degrees of latitude; no delivery fleet works beyond it.
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  else
    redis.call('GEOADD', KEYS[1], change[2], change[3], id)
    redis.call('HSET', KEYS[2], id, change[4] .. ' ' .. change[5] .. ' ' .. change[3] .. ' ' .. change[2])
  end
end
return #changes
