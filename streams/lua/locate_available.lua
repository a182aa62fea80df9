-- locate_available.lua: locate(ids, driver_prefix, min_ts), loaded in front of the searches that use it.
-- Returns the drivers among `ids` that are available with a position at least as fresh as `min_ts`, as
-- flat (id, lat, lng, ts) quadruples in one JSON string: one string to parse in the worker instead of
-- four RESP elements per driver (redis-py's parser is Python), and no read per driver from the worker.
local function locate(ids, driver_prefix, min_ts)
  local out = {}
  for _, id in ipairs(ids) do
    local d = redis.call('HMGET', driver_prefix .. id, 'lat', 'lng', 'ts', 'avail')
    local ts = tonumber(d[3])
    if d[4] == '1' and d[1] and d[1] ~= '' and ts and ts >= min_ts then
      out[#out + 1] = id
      out[#out + 1] = d[1]
      out[#out + 1] = d[2]
      out[#out + 1] = d[3]
    end
  end
  if #out == 0 then return '[]' end  -- cjson writes an empty table as {}
  return cjson.encode(out)
end
