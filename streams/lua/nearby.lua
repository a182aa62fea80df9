-- nearby.lua: the sessions API's search over shard cells that one node holds: every shard of the ring
-- on one Redis, a single shard per call on a Redis Cluster (streams.index.RegionIndex.nearby).
-- KEYS[2j - 1], KEYS[2j] shard j's GEO set of available drivers and its hash of their fixes. ARGV[1] the
-- oldest position still fresh (epoch ms), ARGV[2], ARGV[3] the ring's centre (lng, lat), ARGV[4] a
-- radius (km) that holds the whole ring, ARGV[5..] the ring's resolution-9 cells.
-- Returns the fresh drivers of those cells as one JSON string of flat (id, lat, lng, ts, j) quintuples.
local min_ts = tonumber(ARGV[1])
local wanted = {}
for i = 5, #ARGV do wanted[ARGV[i]] = true end
local out = {}
for j = 1, #KEYS / 2 do
  local found = redis.call('GEOSEARCH', KEYS[2 * j - 1], 'FROMLONLAT', ARGV[2], ARGV[3], 'BYRADIUS', ARGV[4], 'km')
  local fixes = {}
  for first = 1, #found, 1000 do  -- unpack() stops at a few thousand values
    local last = math.min(#found, first + 999)
    local chunk = redis.call('HMGET', KEYS[2 * j], unpack(found, first, last))
    for k = first, last do fixes[k] = chunk[k - first + 1] end
  end
  for k, id in ipairs(found) do
    if fixes[k] then
      local ts, cell, lat, lng = parse_fix(fixes[k])
      if ts and wanted[cell] and tonumber(ts) >= min_ts then
        out[#out + 1] = id
        out[#out + 1] = lat
        out[#out + 1] = lng
        out[#out + 1] = ts
        out[#out + 1] = j
      end
    end
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
