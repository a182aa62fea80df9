-- nearby.lua: the sessions API's search.
-- KEYS: the cell sets of the k-ring. ARGV[1] driver hash prefix, ARGV[2] the oldest position still
-- fresh (epoch ms). Returns locate() of the cells' drivers united.
return locate(redis.call('SUNION', unpack(KEYS)), ARGV[1], tonumber(ARGV[2]))
