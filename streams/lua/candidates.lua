-- candidates.lua: the assignment's candidate searches in one shard cell, one call for a batch of requests.
-- KEYS[1] the shard's GEO set of available drivers, KEYS[2] its hash of their fixes. ARGV[1] the oldest
-- position still fresh (epoch ms), ARGV[2] how many drivers to find, ARGV[3] the first circle's radius
-- (km); ARGV[4..] one (lng, lat, km) triple per search.
-- Returns per search {how many the GEO search found, JSON of the fresh ones as flat (id, lat, lng, ts)
-- quadruples, nearest first}: when the search found the count, more may lie beyond.
--
-- GEOSEARCH reads and sorts every member within its radius, however small its COUNT, so a search over
-- the whole radius of a dense city cost Redis more than the worker spent on the request. Each search
-- grows from ARGV[3] km, four times wider each time, up to its radius, and stops at the first circle
-- holding the count: its members are nearer than anything outside it, so they are the nearest within
-- the whole radius too. One JSON string per search: redis-py's parser is Python, and four RESP elements
-- per driver cost the worker more than the string does.
local min_ts, count, first = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local function nearest(lng, lat, km)
  local r = math.min(km, first)
  while true do
    local found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', lng, lat, 'BYRADIUS', r, 'km', 'ASC', 'COUNT', count)
    if #found >= count or r >= km then return found end
    r = math.min(km, r * 4)
  end
end

local results = {}
for i = 4, #ARGV, 3 do
  local found = nearest(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]))
  local out = {}
  if #found > 0 then
    local fixes = redis.call('HMGET', KEYS[2], unpack(found))
    for j, id in ipairs(found) do
      if fixes[j] then
        local ts, _, lat_, lng_ = parse_fix(fixes[j])
        if ts and tonumber(ts) >= min_ts then
          out[#out + 1] = id
          out[#out + 1] = lat_
          out[#out + 1] = lng_
          out[#out + 1] = ts
        end
      end
    end
  end
  results[#results + 1] = {#found, #out == 0 and '[]' or cjson.encode(out)}
end
return results
