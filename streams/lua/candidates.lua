-- candidates.lua: the assignment's candidate searches, one call for a batch of requests, over shard
-- cells that one node holds: every shard of the searches on one Redis, a single shard per call on a
-- Redis Cluster (streams.index.RegionIndex.candidates).
-- KEYS[2j - 1], KEYS[2j] shard j's GEO set of available drivers and its hash of their fixes.
-- ARGV[1] the oldest position still fresh (epoch ms), ARGV[2] how many drivers to find, ARGV[3] the
-- first circle's radius (km); then per search: lng, lat, radius (km), the number n of shards to read
-- and their numbers j.
-- Returns per search {how many the GEO searches found, JSON of the fresh ones among the nearest as flat
-- (id, lat, lng, ts, j) quintuples, nearest first}: when the searches found the count, more may lie
-- beyond.
--
-- GEOSEARCH reads and sorts every member within its radius, however small its COUNT, so a search over
-- the whole radius of a dense city cost Redis more than the worker spent on the request. Each search
-- grows from ARGV[3] km, four times wider each time, up to its radius, and stops at the first circle
-- holding the count in its shards together: those members are nearer than anything outside it, so they
-- are the nearest within the whole radius too. A shard that the circle has not reached yet costs an
-- empty GEOSEARCH. One JSON string per search: redis-py's parser is Python, and five RESP elements per
-- driver cost the worker more than the string does.
local min_ts, count, first = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local function nearest(lng, lat, km, shards)
  local r = math.min(km, first)
  while true do
    local found = {}
    for _, j in ipairs(shards) do
      local hits = redis.call('GEOSEARCH', KEYS[2 * j - 1], 'FROMLONLAT', lng, lat, 'BYRADIUS', r, 'km', 'ASC',
                              'COUNT', count, 'WITHDIST')
      for _, hit in ipairs(hits) do found[#found + 1] = {tonumber(hit[2]), hit[1], j} end
    end
    if #found >= count or r >= km then
      if #shards > 1 then table.sort(found, function(a, b) return a[1] < b[1] end) end
      return found
    end
    r = math.min(km, r * 4)
  end
end

local results, i = {}, 4
while i <= #ARGV do
  local n = tonumber(ARGV[i + 3])
  local shards = {}
  for s = 1, n do shards[s] = tonumber(ARGV[i + 3 + s]) end
  local found = nearest(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), shards)
  local out = {}
  for k = 1, math.min(#found, count) do
    local id, j = found[k][2], found[k][3]
    local fix = redis.call('HGET', KEYS[2 * j], id)
    if fix then
      local ts, _, lat_, lng_ = parse_fix(fix)
      if ts and tonumber(ts) >= min_ts then
        out[#out + 1] = id
        out[#out + 1] = lat_
        out[#out + 1] = lng_
        out[#out + 1] = ts
        out[#out + 1] = j
      end
    end
  end
  results[#results + 1] = {#found, #out == 0 and '[]' or cjson.encode(out)}
  i = i + 4 + n
end
return results
