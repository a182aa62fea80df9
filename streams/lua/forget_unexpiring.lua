-- forget_unexpiring.lua: deletes the decision keys among KEYS that have no expiry.
-- KEYS: decision keys. ARGV: none. Returns how many were deleted.
-- Those are 0.1.0's, which kept decisions forever. A key with an expiry (any decision since) is left to
-- expire by itself: a retried order's newer decision may stand under the same key as the expired one
-- the sweep found.
local forgotten = 0
for _, key in ipairs(KEYS) do
  if redis.call('TTL', key) == -1 then forgotten = forgotten + redis.call('DEL', key) end
end
return forgotten
