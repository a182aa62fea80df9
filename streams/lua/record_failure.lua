-- record_failure.lua: records a failed decision unless the order already has one.
-- KEYS[1] the order's decision key. ARGV[1] the failed decision, ARGV[2] its expiry (seconds).
-- Returns the order's decision: the existing one, or this one. Failures expire so that a later retry
-- of the same order gets a fresh attempt.
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
