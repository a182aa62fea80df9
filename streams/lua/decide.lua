-- decide.lua: on a single Redis, a batch's reservations and decisions in one call, each order's in one
-- atomic step (streams.index.RegionIndex.reserve_first). A Redis Cluster cannot take it: an order's
-- decision, its candidates and their shards' hints live in different slots, and there reserve.lua,
-- record_decisions.lua and settle.lua take the same steps one slot at a time.
-- KEYS[2j - 1], KEYS[2j] (j <= m) shard j's GEO set and fixes hash; then per order its decision key
-- followed by each candidate's hash and reservation key.
-- ARGV[1] the oldest position still fresh (epoch ms), ARGV[2] how long a decision is kept (seconds),
-- ARGV[3] m, ARGV[4 .. 3 + m] the shard cells of those keys; then per order: its id, the number n of
-- its candidates and n pairs (driver id, ETA in minutes), best first.
-- Returns {per order {'reserved', the driver's position among its candidates, decision} or {'existing',
-- 0, decision} or {'none', n, ''}; the hints' changes left to apply, JSON as upsert.lua's}.
--
-- An order that has a decision already (a redelivered request, or a paused worker racing the
-- partition's new owner) gets it back and reserves nothing. Otherwise it gets the first of its
-- candidates still free, reserved for good with its decision recorded, stamped by Redis's clock
-- (now_iso), and the driver leaves its shard's hints here when the caller named that shard, or in the
-- changes returned (a driver that moved to another shard since it was found). An earlier order of the
-- batch may take a later one's best candidate, which then gets its next.
local min_ts, retention = tonumber(ARGV[1]), ARGV[2]
local shards, first_order = {}, 4 + tonumber(ARGV[3])
for j = 4, first_order - 1 do shards[ARGV[j]] = 2 * (j - 3) - 1 end
local results, left, key, i = {}, {}, 2 * (first_order - 4) + 1, first_order
local decided_at = now_iso()

local function reserve(order, first, n, decision_key)
  local existing = redis.call('GET', decision_key)
  if existing then return {'existing', 0, existing} end
  for k = 0, n - 1 do
    local id, driver, reservation = ARGV[first + 2 * k], KEYS[key + 1 + 2 * k], KEYS[key + 2 + 2 * k]
    if reserve_driver(driver, reservation, order, min_ts, nil) ~= 0 then
      local decision = cjson.encode({orderId = order, driverId = id, eta = tonumber(ARGV[first + 2 * k + 1]),
                                     assignedAt = decided_at, status = 'assigned'})
      record_decision(decision_key, decision, retention)
      local shard = redis.call('HGET', driver, 'sh')
      if shard and shards[shard] then
        apply_hint(KEYS[shards[shard]], KEYS[shards[shard] + 1], {id})
      elseif shard then
        left[#left + 1] = {shard, id}
      end
      return {'reserved', k + 1, decision}
    end
  end
  return {'none', n, ''}
end

while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  results[#results + 1] = reserve(ARGV[i], i + 2, n, KEYS[key])
  key, i = key + 1 + 2 * n, i + 2 + 2 * n
end
return {results, #left == 0 and '[]' or cjson.encode(left)}
