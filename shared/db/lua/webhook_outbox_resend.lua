-- DeliveryHistory.resend (shared.webhooks.history): a finished delivery made pending again, due now,
-- unless it is pending already (an attempt may be under way: it is left alone). KEYS[1]: the delivery,
-- KEYS[2]: the due set, KEYS[3]: its tenant's failed deliveries. ARGV[1]: the delivery id; ARGV[2]: when
-- the poller may take it (the enqueued message normally comes first); ARGV[3]: '1' to resend it only while
-- it is among its tenant's failed ones (a retry of all of them: another may have sent it since it was
-- listed); ARGV[4..]: the field, JSON value pairs to set (its state, body, next attempt). Returns 1 when
-- made pending, 0 when it was pending, is gone, or (ARGV[3]) has left the failed ones.
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == '"pending"' then return 0 end
if ARGV[3] == '1' and not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
