-- nearby.lua: the sessions API's search, in one shard cell.
-- KEYS[1] the shard's GEO set of available drivers, KEYS[2] its hash of their fixes. ARGV[1] the oldest
-- position still fresh (epoch ms), ARGV[2], ARGV[3] the ring's centre (lng, lat), ARGV[4] a radius (km)
-- that holds the whole ring, ARGV[5..] the ring's resolution-9 cells in this shard.
-- Returns the fresh drivers of those cells as one JSON string of flat (id, lat, lng, ts) quadruples.
local min_ts = tonumber(ARGV[1])
local wanted = {}
for i = 5, #ARGV do wanted[ARGV[i]] = true end
local found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[2], ARGV[3], 'BYRADIUS', ARGV[4], 'km')
local out = {}
if #found > 0 then
  local fixes = {}
  for first = 1, #found, 1000 do  -- unpack() stops at a few thousand values
    local last = math.min(#found, first + 999)
    local chunk = redis.call('HMGET', KEYS[2], unpack(found, first, last))
    for j = first, last do fixes[j] = chunk[j - first + 1] end
  end
  for j, id in ipairs(found) do
    if fixes[j] then
      local ts, cell, lat, lng = parse_fix(fixes[j])
      if ts and wanted[cell] and tonumber(ts) >= min_ts then
        out[#out + 1] = id
        out[#out + 1] = lat
        out[#out + 1] = lng
        out[#out + 1] = ts
      end
    end
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
