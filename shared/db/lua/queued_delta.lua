-- The queued counters (shared.scheduling.queue_counters), for a script whose KEYS[1] is the record
-- and whose last two KEYS are the tenant and family counter hashes. queued_delta(delta) moves the
-- record's tenant and family by delta; counts that reach zero are dropped, so the hashes only name
-- what is actually waiting.
local function queued_bump(hash, field, delta)
  if redis.call('HINCRBY', hash, field, delta) <= 0 then redis.call('HDEL', hash, field) end
end
local function queued_delta(delta)
  local tenant = redis.call('HGET', KEYS[1], 'tenant')
  local family = redis.call('HGET', KEYS[1], 'queue')
  if tenant then queued_bump(KEYS[#KEYS - 1], cjson.decode(tenant), delta) end
  if family and cjson.decode(family) ~= '' then queued_bump(KEYS[#KEYS], cjson.decode(family), delta) end
end
