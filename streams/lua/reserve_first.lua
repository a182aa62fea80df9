-- reserve_first.lua: reserves a driver for each of several orders, in order, one call for a batch.
-- KEYS: none (built from the prefixes).
-- ARGV[1] driver hash prefix, ARGV[2] reservation prefix, ARGV[3] decision prefix, ARGV[4] GEO set of
-- available drivers, ARGV[5] cell set prefix, ARGV[6] the oldest position still fresh (epoch ms),
-- ARGV[7] how long a decision is kept (seconds); then per order: its id, its decision without a
-- driver (JSON: the driver's id and ETA are filled in), the number n of its candidates, and n pairs
-- (driver id, ETA in minutes), best first.
-- Returns per order: {'reserved', the driver's position among its candidates (1-based), decision},
-- {'existing', 0, decision} or {'none', n, ''}.
--
-- Each order gets the first of its candidates still free, available and fresh, unless it already has a
-- decision (a redelivered request, or a paused worker racing the partition's new owner), which is
-- returned instead: a decision, once made, is never overwritten. An earlier order of the batch may take
-- a later one's best candidate, which then gets its next.
local drivers, reservations, decisions, available, cells = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local min_ts, retention = tonumber(ARGV[6]), ARGV[7]

local function reserve(order, unnamed, first, n)
  local existing = redis.call('GET', decisions .. order)
  if existing then return {'existing', 0, existing} end
  for k = 0, n - 1 do
    local id = ARGV[first + 2 * k]
    if redis.call('EXISTS', reservations .. id) == 0 then
      local d = redis.call('HMGET', drivers .. id, 'avail', 'c9', 'ts')
      if d[1] == '1' and tonumber(d[3]) >= min_ts then
        local named = cjson.decode(unnamed)
        named['driverId'], named['eta'] = id, tonumber(ARGV[first + 2 * k + 1])
        local decision = cjson.encode(named)
        redis.call('SET', reservations .. id, order)
        redis.call('SET', decisions .. order, decision, 'EX', retention)
        redis.call('HSET', drivers .. id, 'avail', '0')
        redis.call('SREM', cells .. d[2], id)
        redis.call('ZREM', available, id)
        return {'reserved', k + 1, decision}
      end
    end
  end
  return {'none', n, ''}
end

local results, i = {}, 8
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  results[#results + 1] = reserve(ARGV[i], ARGV[i + 1], i + 3, n)
  i = i + 3 + 2 * n
end
return results
