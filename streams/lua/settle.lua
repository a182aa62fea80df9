-- settle.lua: settles reservations of one driver partition once their orders' decisions are recorded.
-- KEYS[2i - 1], KEYS[2i] driver i's hash and reservation key. ARGV[2i - 1] the order it was reserved
-- for, ARGV[2i] '1' to keep it (the order's decision names this driver) or '0' to release it (the order
-- was decided otherwise, by another worker or an earlier delivery of the request).
-- Returns {the hints' changes as upsert.lua's, the positions i of drivers to keep that another order
-- holds}: a kept driver leaves its shard's hints, a released one still assignable comes back to them.
--
-- A driver to keep whose reservation is gone is reserved again: its order's decision names it, and the
-- provisional reservation of a worker that stopped between recording and settling may have expired
-- before the request was redelivered. Held by another order by then, it is reported, not taken.
-- A reservation to release that is gone or held by another order is left alone: a trip may have ended
-- meanwhile (upsert.lua released it), or the reservation expired and another order took the driver.
local hints, lost = {}, {}
for i = 1, #KEYS / 2 do
  local driver, reservation, order = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i - 1]
  local holder = redis.call('GET', reservation)
  local d = redis.call('HMGET', driver, 'sh', 'asg', 'lng', 'lat', 'ts', 'c9')
  local id = string.match(driver, '}:(.*)$')
  if ARGV[2 * i] == '1' then
    if holder and holder ~= order then
      lost[#lost + 1] = i
    else
      if holder then
        redis.call('PERSIST', reservation)
      else
        redis.call('SET', reservation, order)
        redis.call('HSET', driver, 'avail', '0')
      end
      if d[1] then hints[#hints + 1] = {d[1], id} end
    end
  elseif holder == order then
    redis.call('DEL', reservation)
    if d[2] == '1' then
      redis.call('HSET', driver, 'avail', '1')
      if d[1] and d[6] ~= '' then hints[#hints + 1] = {d[1], id, d[3], d[4], d[5], d[6]} end
    end
  end
end
return {#hints == 0 and '[]' or cjson.encode(hints), lost}
