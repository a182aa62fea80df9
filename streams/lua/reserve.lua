-- reserve.lua: tries to reserve drivers of one partition, each for an order, in order; one call per
-- driver partition and round of a batch's reservations (streams.index.RegionIndex.reserve_first).
-- KEYS[2i - 1], KEYS[2i] driver i's hash and reservation key. ARGV[1] the oldest position still fresh
-- (epoch ms), ARGV[2] how long a reservation stays provisional (ms), ARGV[2 + i] the order for driver i.
-- Returns {one integer per driver: 1 reserved for the order, 2 reserved for it already (a redelivered
-- request), 0 not: reserved for another order, unavailable or its position stale; now by Redis's clock
-- (now_iso), the assignedAt of the orders that got their drivers here}.
--
-- The order's decision is recorded next, in its own slot (record_decisions.lua), and then the
-- reservation is settled (settle.lua): kept for good, or released when the order had a decision
-- already. Until then it expires by itself, so that a worker stopped in between leaves no driver held
-- for an order it never answered; the driver's next ping makes it available again (move.lua).
local min_ts, provisional_ms = tonumber(ARGV[1]), ARGV[2]
local results = {}
for i = 3, #ARGV do
  local n = i - 2
  results[n] = reserve_driver(KEYS[2 * n - 1], KEYS[2 * n], ARGV[i], min_ts, provisional_ms)
end
return {results, now_iso()}
