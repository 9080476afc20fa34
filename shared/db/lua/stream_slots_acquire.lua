-- StreamSlots.hold (api.streams.slots). KEYS[1]: the tenant's slots. ARGV[1]: member, ARGV[2]:
-- cap, ARGV[3]: lease (ms). Server time, so API processes agree. Drops lapsed slots, then takes one
-- if fewer than the cap are held.
-- Returns the number held before (the caller got one when that is under the cap).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return held
