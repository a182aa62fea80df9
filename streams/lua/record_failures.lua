-- record_failures.lua: records failed decisions, each unless its order already has one.
-- KEYS[i] an order's decision key; ARGV[1] the failures' expiry (seconds), ARGV[i + 1] the order's
-- failed decision. Returns each order's decision: the existing one, or its failure. Failures expire so
-- that a later retry of the same order gets a fresh attempt.
local decisions = {}
for i, key in ipairs(KEYS) do
  local existing = redis.call('GET', key)
  if existing then
    decisions[i] = existing
  else
    redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
    decisions[i] = ARGV[i + 1]
  end
end
return decisions
