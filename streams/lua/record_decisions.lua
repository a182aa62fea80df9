-- record_decisions.lua: records orders' decisions, each unless its order already has one; one call per
-- request partition.
-- KEYS[i] an order's decision key; ARGV[1] how long the decisions are kept (seconds), ARGV[i + 1] the
-- order's decision. Returns each order's decision: the one it had, or the one given.
-- A redelivered request, or a paused worker racing the partition's new owner, gets the first decision
-- back. Failures are kept for a short while only, so that a later retry of the same order gets a fresh
-- attempt.
local decisions = {}
for i, key in ipairs(KEYS) do
  decisions[i] = record_decision(key, ARGV[i + 1], ARGV[1])
end
return decisions
