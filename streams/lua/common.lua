-- common.lua: the steps several scripts share; streams.index.lua puts it ahead of every script.

-- A driver's fix as a shard's hash keeps it: "<ts> <cell> <lat> <lng>"; returns ts, cell, lat, lng.
local function parse_fix(fix)
  return string.match(fix, '^(%d+) (%w+) (%S+) (%S+)$')
end

-- Reserves a driver for an order if it is free, available and its position fresh: for good, or for
-- `expiry_ms` (a reservation to be settled later). Returns 1 reserved, 2 held by this order already
-- (a redelivered request), 0 not (another order's, unavailable or stale).
local function reserve_driver(driver, reservation, order, min_ts, expiry_ms)
  local holder = redis.call('GET', reservation)
  if holder == order then return 2 end
  if holder then return 0 end
  local d = redis.call('HMGET', driver, 'avail', 'ts')
  if d[1] ~= '1' or tonumber(d[2]) < min_ts then return 0 end
  if expiry_ms then
    redis.call('SET', reservation, order, 'PX', expiry_ms)
  else
    redis.call('SET', reservation, order)
  end
  redis.call('HSET', driver, 'avail', '0')
  return 1
end

-- Records an order's decision for `ttl_s` unless it has one: a decision, once made, is never
-- overwritten. Returns the order's decision, the one it had or this one.
local function record_decision(key, decision, ttl_s)
  local existing = redis.call('GET', key)
  if existing then return existing end
  redis.call('SET', key, decision, 'EX', ttl_s)
  return decision
end

-- Applies one change to a shard's hints (GEO set `geo`, fixes hash `fixes`): {id, lng, lat, ts, cell}
-- for a driver available at that fix, {id} for one that is not.
local function apply_hint(geo, fixes, change)
  local id = change[1]
  if #change == 1 or math.abs(tonumber(change[3])) > 85.05112878 then
    -- Redis GEO stops at 85.05 degrees of latitude; no delivery fleet works beyond it.
    redis.call('ZREM', geo, id)
    redis.call('HDEL', fixes, id)
  else
    redis.call('GEOADD', geo, change[2], change[3], id)
    redis.call('HSET', fixes, id, change[4] .. ' ' .. change[5] .. ' ' .. change[3] .. ' ' .. change[2])
  end
end
