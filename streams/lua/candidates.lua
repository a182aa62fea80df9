-- candidates.lua: the assignment's candidate searches, one call for a batch of requests.
-- KEYS[1] the GEO set of available drivers. ARGV[1] driver hash prefix, ARGV[2] the oldest position
-- still fresh (epoch ms), ARGV[3] how many drivers to find, ARGV[4] the first circle's radius (km);
-- ARGV[5..] one (lng, lat, km) triple per request.
-- Returns per request {how many the GEO search found, locate() of them}: nearest first within the
-- radius; when the search found the count, more may lie beyond.
--
-- GEOSEARCH reads and sorts every member within its radius, however small its COUNT, so a search over
-- the whole radius of a dense city cost Redis more than the worker spent on the request. Each search
-- grows from ARGV[4] km, four times wider each time, up to its radius, and stops at the first circle
-- holding the count: its members are nearer than anything outside it, so they are the nearest within
-- the whole radius too.
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
