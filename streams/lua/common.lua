-- common.lua: the steps several scripts share; streams.index.lua puts it ahead of every script.

-- A driver's fix as a shard's hash keeps it: "<ts> <cell> <lat> <lng>"; returns ts, cell, lat, lng.
local function parse_fix(fix)
  return string.match(fix, '^(%d+) (%w+) (%S+) (%S+)$')
end

-- An instant in epoch ms as ISO-8601 in UTC with milliseconds, schemas.models.iso_utc's form.
local function iso_utc(ms)
  local s = math.floor(ms / 1000)
  local days, second = math.floor(s / 86400), s % 86400
  -- The civil date of a day count (days since 1970-01-01), in 400-year eras starting on 1 March.
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', year, month, day, math.floor(second / 3600),
                       math.floor(second % 3600 / 60), second % 60, ms % 1000)
end

-- Now by Redis's clock, as iso_utc: an assignment's assignedAt. Stamped in the step that reserves its
-- driver, it cannot fall before the driver was freed of an earlier trip, which a worker's stamp taken
-- before a slow or retried call can.
local function now_iso()
  local t = redis.call('TIME')
  return iso_utc(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
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
