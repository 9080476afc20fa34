-- A token bucket, for scripts that rate-limit (ratelimit_take, auth_take). take_from_bucket(key,
-- rate (tokens/s), burst, cost) refills the bucket at key by the time passed (the server's clock, so
-- API replicas agree), takes cost when it holds that much, and returns {allowed (0/1), tokens left
-- (string, fractional)}.
local function take_from_bucket(key, rate, burst, cost)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  local tokens = tonumber(redis.call('HGET', key, 'tokens') or burst)
  local last = tonumber(redis.call('HGET', key, 'ts') or now)
  tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
  local allowed = 0
  if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
  return {allowed, tostring(tokens)}
end
